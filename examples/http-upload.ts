// Recipe: stream HTTP request bodies into a blob, resumably. A small
// upload protocol on node:http (issue 18 brings a full tus server):
//   PUT  /blobs/NAME   body: bytes from `Upload-Offset` on; `Upload-Hash: HEX`
//                      on the last request finalizes with that BEP 52 root
//   HEAD /blobs/NAME   `Upload-Offset`: the bytes durably held
// A cut request keeps every byte that arrived: the server makes them
// durable, and the client asks where to go on.
// Run: node dist/examples/http-upload.js [DIR]
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { BlobStore, isCabError, merkleRoot, toHex } from 'cabstore';

const dir = process.argv[2] ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-http-')));
const store = await BlobStore.open(dir);
const busy = new Map<string, Promise<void>>(); // name -> the request writing it

async function put(name: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const w = (await store.has(name)) ? await store.resumeBlobWriter(name) : await store.newBlobWriter(name);
  try {
    if (Number(req.headers['upload-offset'] ?? 0) !== w.size) {
      res.writeHead(409, { 'Upload-Offset': w.size }).end(); // the client is out of step: tell it where we are
      return;
    }
    const hash = req.headers['upload-hash'];
    // The body streams into the blob with backpressure; 'finish' means durable (or, with finalize, finalized).
    await pipeline(req, w.createWriteStream(typeof hash === 'string' ? { finalize: true, expectHash: hash } : {}));
    res.writeHead(204, { 'Upload-Offset': w.size }).end();
  } finally {
    await w.closeWithoutFinalize(); // a cut or failed request: what arrived is made durable, to resume from
  }
}

const server = http.createServer((req, res) => {
  const name = /^\/blobs\/([0-9a-f]{32})$/.exec(req.url ?? '')?.[1];
  if (!name) return void res.writeHead(404).end();
  const job = (busy.get(name) ?? Promise.resolve()).then(async () => {
    if (req.method === 'HEAD') {
      const st = (await store.has(name)) ? await store.stat(name) : { size: 0, finalized: false };
      res.writeHead(200, { 'Upload-Offset': st.size, 'Upload-Finalized': String(st.finalized) }).end();
    } else if (req.method === 'PUT') {
      await put(name, req, res);
    } else res.writeHead(405).end();
  });
  const done = job.catch((e: unknown) => {
    if (!res.headersSent) res.writeHead(isCabError(e, 'ERR_HASH_MISMATCH') ? 422 : 500).end(isCabError(e) ? e.code : 'error');
    else res.destroy();
  });
  busy.set(name, done);
});
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${(server.address() as { port: number }).port}/blobs`;

// The client: 6 MiB in one PUT that the network cuts after 2.5 MiB, then HEAD and the rest.
const body = randomBytes(6 * 1024 * 1024);
const name = toHex(randomBytes(16));
const send = (method: string, headers: Record<string, string | number>, bytes?: Uint8Array, cutAfter?: number) =>
  new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(`${base}/${name}`, { method, headers }, resolve).on('error', reject);
    if (bytes && cutAfter !== undefined) {
      req.write(bytes.subarray(0, cutAfter), () => setTimeout(() => req.destroy(new Error('the network went away')), 200));
    } else req.end(bytes);
  });

await send('PUT', { 'Upload-Offset': 0 }, body, 2.5 * 1024 * 1024).catch((e: Error) => console.log(`first PUT: ${e.message}`));
const head = await send('HEAD', {});
const offset = Number(head.headers['upload-offset']);
console.log(`the server holds ${offset} bytes durably`);
const last = await send('PUT', { 'Upload-Offset': offset, 'Upload-Hash': toHex(merkleRoot(body)) }, body.subarray(offset));
const after = await send('HEAD', {});
console.log(`second PUT: ${last.statusCode}; finalized ${after.headers['upload-finalized']}, ${after.headers['upload-offset']} bytes`);
console.log(`root ${toHex((await store.stat(name)).hash!)} as sent: ${toHex((await store.stat(name)).hash!) === toHex(merkleRoot(body))}`);
server.close();
await store.close();
