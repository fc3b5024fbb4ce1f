// Hostile review, fifth session: failing tests for what the review found.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { BlobStore, merkleRoot, toHex } from '../src/index.js';
import { readDescriptor } from '../src/format/descriptor.js';
import { descriptorPath } from './helpers/paths.js';
import { prngBytes } from '../tools/data.js';
import { readAll, tempDir, tempStore } from './helpers/store.js';
import { create, served, tusHeaders } from './helpers/http.js';

const MiB = 1024 * 1024;
const SIZE = 40 * MiB + 12345;
const SRC = '5a'.repeat(16);

function file(t: ExecutionContext, bytes: Uint8Array, name: string): string {
  const f = path.join(tempDir(t), name);
  fs.writeFileSync(f, bytes);
  return f;
}

test('same-leaves: a source name deleted and reused under a writer lends the old blob\'s leaves and bytes for the new blob\'s chunks', async (t) => {
  const store = await tempStore(t);
  const p = prngBytes('h5-p', SIZE);
  // q repeats p for 16 MiB, then differs; the writer writes q.
  const q = Buffer.concat([p.subarray(0, 16 * MiB), prngBytes('h5-r', SIZE - 16 * MiB)]);
  const fp = file(t, p, 'p.bin');
  const fq = file(t, q, 'q.bin');
  const a = await store.newBlobWriter(SRC);
  await a.appendBytes({ file: fp });
  await a.close();
  const w = await store.newBlobWriter();
  await w.appendBytes({ file: fq, offset: 0, size: 16 * MiB }); // dedup hits on 'src' (p): it becomes the source
  await new Promise((r) => setTimeout(r, 300)); // its layer loaded and checked
  await store.deleteBlob(SRC);
  const b = await store.newBlobWriter(SRC); // the name again, now with q's bytes
  await b.appendBytes({ file: fq });
  await b.close();
  t.is(toHex(b.hash), toHex(merkleRoot(q)));
  await w.appendBytes({ file: fq, offset: 16 * MiB });
  await w.close();
  t.true((await readAll(store, w.name)).equals(q), 'the writer\'s blob reads back its bytes');
  // Leaves may be lent again, by the blob now under the name (it holds q: the same bytes at the same offsets), never by the one gone.
  t.log(`leaves lent: ${w.leavesLent}`);
  t.is(toHex(w.hash), toHex(merkleRoot(q)), 'the writer\'s root is the true root of its bytes');
});

/** A child process that writes `total` bytes of prngBytes(seed) with checkpointEvery(1 MiB), stalling for ever at `stopAt`; prints the blob name. */
function stalledWriter(dir: string, seed: string, total: number, stopAt: number): { child: ChildProcess; name: Promise<string> } {
  const src = new URL('../src/index.js', import.meta.url).href;
  const data = new URL('../tools/data.js', import.meta.url).href;
  const code = `
    const { BlobStore } = await import(${JSON.stringify(src)});
    const { prngBytes } = await import(${JSON.stringify(data)});
    setInterval(() => {}, 1000);
    const store = await BlobStore.open(${JSON.stringify(dir)});
    const bytes = prngBytes(${JSON.stringify(seed)}, ${total});
    const w = await store.newBlobWriter();
    process.stdout.write(w.name + '\\n');
    w.checkpointEvery(1024 * 1024);
    async function* body() {
      for (let at = 0; at < bytes.length; at += 65536) {
        if (at === ${stopAt}) await new Promise(() => {});
        yield bytes.subarray(at, at + 65536);
      }
    }
    await w.appendStream(body());
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const name = new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.trim());
    });
    child.once('exit', (c) => reject(new Error(`child exited ${c}`)));
  });
  return { child, name };
}

async function durableSize(store: BlobStore, name: string): Promise<number> {
  try {
    return (await readDescriptor(descriptorPath(store, name), name)).size;
  } catch {
    return 0;
  }
}

test('checkpoints: a writer SIGKILLed with durable records out of the index; GC meanwhile, then reopen: fsck clean, chunks found, resumes, bytes right', async (t) => {
  const dir = tempDir(t);
  const total = 12 * MiB;
  const bytes = prngBytes('h5-kill', total);
  const { child, name: named } = stalledWriter(dir, 'h5-kill', total, 8 * MiB);
  t.teardown(() => child.kill('SIGKILL'));
  const name = await named;
  const other = await BlobStore.open(dir);
  let closed = false;
  t.teardown(() => (closed ? undefined : other.close()));
  const deadline = Date.now() + 30_000;
  while ((await durableSize(other, name)) < 7 * MiB && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const durable = await durableSize(other, name);
  t.true(durable >= 7 * MiB, `durable ${durable}`);
  // Another process meanwhile: GC must keep every fragment a durable record names; its bytes read back.
  await other.gc();
  const r = await other.newBlobReader(name).catch(() => undefined);
  if (r) await r.close();
  t.is(child.exitCode, null, 'the writer is still running when killed');
  const exited = new Promise((res) => child.once('exit', res));
  child.kill('SIGKILL');
  await exited;
  // The writer may have made more durable between the look above and the kill: what stands now is what resumes.
  const kept = await durableSize(other, name);
  t.true(kept >= durable, `durable ${kept} after the kill, ${durable} before`);
  await other.gc();
  await other.close();
  closed = true;
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const report = await store.fsck({ verify: true } as never);
  t.deepEqual(report.problems, [], 'fsck finds nothing wrong after the kill');
  const w = await store.resumeBlobWriter(name);
  t.is(w.size, kept);
  // Every chunk of the durable records is in the index after reopen (dedup needs it).
  for await (const c of store.blobChunkStream(name)) {
    const loc = await store.lookupChunk(c.hash);
    t.is(loc.size, c.size);
  }
  await w.appendBytes(bytes.subarray(kept));
  await w.close();
  t.is(toHex(w.hash), toHex(merkleRoot(bytes)));
  t.true((await readAll(store, name)).equals(bytes));
});

test('same-leaves: edits at leaf and chunk edges, odd sizes, appendBlob mixed with bytes, two writers at once, a resumed writer: every root is the true root', async (t) => {
  const store = await tempStore(t);
  const size = 24 * MiB + 16383;
  const base = prngBytes('h5-base', size);
  const fb = file(t, base, 'base.bin');
  const a = await store.newBlobWriter();
  await a.appendBytes({ file: fb });
  await a.close();
  const variants: Buffer[] = [];
  // One byte changed right before, at and after leaf boundaries, and in the last partial leaf.
  const edged = Buffer.from(base);
  for (const at of [16384 * 100 - 1, 16384 * 300, 16384 * 500 + 1, size - 3]) edged[at] = edged[at]! ^ 1;
  variants.push(edged);
  // Same prefix, shorter (a partial last leaf inside the source's full leaf), and longer.
  variants.push(base.subarray(0, 20 * MiB + 5));
  variants.push(Buffer.concat([base, prngBytes('h5-more', 100_000)]));
  for (const [i, v] of variants.entries()) {
    const w = await store.newBlobWriter();
    await w.appendBytes({ file: file(t, v, `v${i}.bin`) });
    await w.close();
    t.is(toHex(w.hash), toHex(merkleRoot(v)), `variant ${i}`);
  }
  // appendBlob of the source's middle between bytes of its own.
  const mixed = Buffer.concat([base.subarray(0, 5 * MiB + 7), base.subarray(5 * MiB + 7, 15 * MiB), prngBytes('h5-x', 3333), base.subarray(15 * MiB + 3333)]);
  const m = await store.newBlobWriter();
  await m.appendBytes(mixed.subarray(0, 5 * MiB + 7));
  await m.appendBlob(a.name, 5 * MiB + 7, 10 * MiB - 5 * MiB - 7 + 5 * MiB);
  await m.appendBytes(mixed.subarray(15 * MiB));
  await m.close();
  t.is(toHex(m.hash), toHex(merkleRoot(mixed)), 'mixed appendBlob and bytes');
  // Two writers at once, of edged and of base.
  const [x, y] = await Promise.all([store.newBlobWriter(), store.newBlobWriter()]);
  await Promise.all([x.appendBytes({ file: fb }), y.appendBytes(edged)]);
  await Promise.all([x.close(), y.close()]);
  t.is(toHex(x.hash), toHex(merkleRoot(base)));
  t.is(toHex(y.hash), toHex(merkleRoot(edged)));
  // A resumed writer.
  const r = await store.newBlobWriter();
  await r.appendBytes(edged.subarray(0, 9 * MiB + 1));
  await r.closeWithoutFinalize();
  const r2 = await store.resumeBlobWriter(r.name);
  await r2.appendBytes(edged.subarray(9 * MiB + 1));
  await r2.close();
  t.is(toHex(r2.hash), toHex(merkleRoot(edged)), 'resumed');
  t.true((await readAll(store, r2.name)).equals(edged));
});

/** A raw PATCH that sends `first` and holds the body open; `rest()` sends the rest and ends it. */
function heldPatch(url: string, offset: number, body: Buffer, first: number): { answer: Promise<number>; rest: () => void; cut: () => void } {
  const req = http.request(url, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream', 'content-length': String(body.length - offset) }) });
  const answer = new Promise<number>((resolve) => {
    req.on('response', (res) => (res.resume(), resolve(res.statusCode!)));
    req.on('error', () => resolve(-1));
  });
  req.write(body.subarray(offset, first));
  return { answer, rest: () => req.end(body.subarray(first)), cut: () => req.destroy() };
}

test('tus: two PATCHes on one upload at once, and clients cut mid-body, with maxUploads 2: no bytes lost or doubled, and the server still takes uploads after', async (t) => {
  const { store, base } = await served(t, { maxUploads: 2, uploadStallMs: 2000 });
  const bytes = crypto.randomBytes(3 * MiB);
  const url = await create(base, bytes.length);
  const name = url.split('/').pop()!;
  const one = heldPatch(url, 0, bytes, MiB);
  await new Promise((r) => setTimeout(r, 300));
  const two = heldPatch(url, 0, bytes, 2 * MiB);
  await new Promise((r) => setTimeout(r, 300));
  one.rest();
  two.rest();
  const [s1, s2] = await Promise.all([one.answer, two.answer]);
  t.log('statuses', s1, s2);
  const head = await fetch(url, { method: 'HEAD', headers: tusHeaders() });
  const offset = Number(head.headers.get('upload-offset'));
  t.true(offset <= bytes.length, `offset ${offset}`);
  if (offset < bytes.length) {
    const r = await fetch(url, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' }), body: bytes.subarray(offset) });
    t.is(r.status, 204);
  }
  t.true((await readAll(store, name)).equals(bytes), 'the upload holds exactly its bytes');
  // Clients that go mid-body, more than maxUploads of them, one after another: each frees its place (once the
  // server has seen the cut and made the bytes it took durable: on a busy machine that outlasts the 100 ms here).
  for (let i = 0; i < 5; i++) {
    const u = await create(base, MiB, 5000);
    const p = heldPatch(u, 0, crypto.randomBytes(MiB), 1000);
    await new Promise((r) => setTimeout(r, 100));
    p.cut();
    await p.answer;
  }
  await new Promise((r) => setTimeout(r, 300));
  const last = await create(base, 10, 5000);
  const r = await fetch(last, { method: 'PATCH', headers: tusHeaders({ 'upload-offset': '0', 'content-type': 'application/offset+octet-stream' }), body: Buffer.alloc(10, 7) });
  t.is(r.status, 204, 'the server still takes an upload');
});
