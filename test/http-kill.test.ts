// A tus upload through tus-js-client while the server (`cabstore serve`, a
// child process) is killed with SIGKILL and started again on the same port:
// the upload resumes where the durable bytes end and completes with the
// file's root.
import test from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { merkleRoot, toHex } from '../src/index.js';
import { UPLOAD_FLUSH_BYTES } from '../src/http/tus-store.js';
import { killed, ok, start, waitFor } from './helpers/cli.js';
import { get, tusUpload } from './helpers/http.js';
import { tempDir } from './helpers/store.js';

const MiB = 1024 * 1024;

test('a tus upload survives the server being killed with SIGKILL twice, resumes from the durable bytes, and ends with the right root', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'store');
  await ok(t, dir, ['init', store]);
  const tokens = path.join(dir, 'tokens');
  fs.writeFileSync(tokens, 'up read,write\n');
  const file = path.join(dir, 'up.bin');
  const bytes = crypto.randomBytes(96 * MiB);
  fs.writeFileSync(file, bytes);

  let port = 0;
  let server: ChildProcess | undefined;
  const startServer = async () => {
    server = start(['--store', store, 'serve', '--token-file', tokens, '--port', String(port), '--quiet']);
    port = Number((await waitFor(server, /serving ws:\/\/127\.0\.0\.1:(\d+)/, 'serve'))[1]);
  };
  t.teardown(() => (server ? killed(server).then(() => {}) : undefined));
  await startServer();

  const killAt = [0.35, 0.7].map((f) => Math.floor(f * bytes.length));
  const kills: Array<Promise<void>> = [];
  /** Each resume: the offset it restarted from, and how far the client had got. */
  const resumes: Array<{ at: number; from: number }> = [];
  let last = 0;
  const up = await tusUpload(`http://127.0.0.1:${port}/files/`, file, {
    token: 'up',
    retryDelays: [200, 300, 500, 1000, 1000, 2000, 2000, 4000, 4000],
    onProgress: (sent) => {
      if (sent < last) resumes.push({ at: sent, from: last });
      last = sent;
      if (killAt.length > 0 && sent >= killAt[0]! && kills.length === 2 - killAt.length) {
        killAt.shift();
        kills.push(killed(server!).then(startServer));
      }
    },
  });
  await Promise.all(kills);
  const said = resumes.map((r) => `${r.at} (had sent ${r.from})`).join(', ');
  t.log(`resumed at ${said}; sent ${up.wire} bytes for ${bytes.length}`);
  t.is(kills.length, 2);
  t.true(resumes.length >= 2, `resumed ${resumes.length} times`);
  t.true(resumes.every((r) => r.at >= UPLOAD_FLUSH_BYTES), `resumed from the durable bytes, not from 0: ${said}`);
  // What was sent again is bounded by what a kill can lose: the segment being appended, the one whose
  // checkpoint was being made durable, and the bytes in flight.
  t.true(up.wire <= bytes.length + 2 * (2 * UPLOAD_FLUSH_BYTES + 8 * MiB), `sent ${up.wire} bytes for ${bytes.length}`);
  const head = await get(`http://127.0.0.1:${port}/blobs/${up.name}`, 'up', {}, 'HEAD');
  t.is(head.status, 200);
  t.is(head.headers.get('x-cabstore-root'), toHex(merkleRoot(bytes)));
  t.is(head.headers.get('content-length'), String(bytes.length));
});
