// The http case: the HTTP face of `cabstore serve` beside the plain thing,
// each server a child process, the client (this process) on 127.0.0.1, in
// the same run. Uploads: tus-js-client sending a file (one PATCH) to ours
// (chunked, hashed, deduplicated, a durable checkpoint every 8 MiB) and to
// @tus/server with its own @tus/file-store (bytes appended to a file, no
// fsync). Reads: a GET of the whole blob from
// our /blobs/NAME (every byte checked against its chunk hash) and from a
// server piping fs.createReadStream to the response. Each upload goes to a
// fresh store or folder, so dedup plays no part.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore } from '../../src/index.js';
import { type BenchContext, MB, median, timeAsync } from './harness.js';
import { dataFile } from './files.js';
import { BENCH_TOKEN as TOKEN, serveStore } from './processes.js';
import { tusUploadFile } from './tus-kill.js';

const MiB = 2 ** 20;
const PEER = fileURLToPath(new URL('./tus-peer.js', import.meta.url));

export async function benchHttp(ctx: BenchContext): Promise<void> {
  const size = ctx.sizeBytes;
  const file = await dataFile(ctx, 'http', size);
  const label = `http ${Math.round(size / MiB)} MiB`;
  const ours = { up: [] as number[], get: [] as number[] };
  const peer = { up: [] as number[], get: [] as number[] };
  for (let i = 0; i < ctx.runs; i++) {
    // Ours: `cabstore serve` of a fresh store.
    const dir = path.join(ctx.workDir, `http-store-${i}`);
    fs.rmSync(dir, { recursive: true, force: true });
    await (await BlobStore.open(dir, { create: true })).close();
    const srv = await serveStore(dir, ctx.workDir, 'read,write');
    try {
      const base = `http://127.0.0.1:${srv.port}`;
      const [up, upSecs] = await timeAsync(() => tusUploadFile(`${base}/files/`, file));
      ours.up.push(size / MB / upSecs);
      const [n, getSecs] = await timeAsync(() => download(`${base}/blobs/${up.name}`));
      if (n !== size) throw new Error(`GET gave ${n} bytes of ${size}`);
      ours.get.push(size / MB / getSecs);
    } finally {
      await srv.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }

    // The peer: @tus/server with @tus/file-store, and fs.createReadStream piped to the response (tus-peer.ts).
    const folder = path.join(ctx.workDir, `http-tus-${i}`);
    fs.rmSync(folder, { recursive: true, force: true });
    fs.mkdirSync(folder, { recursive: true });
    const child = spawn(process.execPath, [PEER, folder, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        child.stdout.once('data', (d: Buffer) => resolve(Number(/port (\d+)/.exec(d.toString())?.[1])));
        child.once('exit', (code) => reject(new Error(`tus-peer exited ${code}`)));
      });
      const base = `http://127.0.0.1:${port}`;
      const [, upSecs] = await timeAsync(() => tusUploadFile(`${base}/files/`, file));
      peer.up.push(size / MB / upSecs);
      const [n, getSecs] = await timeAsync(() => download(`${base}/plain`));
      if (n !== size) throw new Error(`plain GET gave ${n} bytes of ${size}`);
      peer.get.push(size / MB / getSecs);
    } finally {
      child.kill('SIGTERM');
      await exited;
      fs.rmSync(folder, { recursive: true, force: true });
    }
    ctx.log(`run ${i + 1}: tus ${ours.up[i]!.toFixed(0)} vs ${peer.up[i]!.toFixed(0)} MB/s, GET ${ours.get[i]!.toFixed(0)} vs ${peer.get[i]!.toFixed(0)} MB/s`);
  }
  const row = { case: label, unit: 'MB/s', higherIsBetter: true };
  ctx.rows.push({ ...row, metric: 'tus upload (tus-js-client), durable', ours: median(ours.up), peer: '@tus/server + @tus/file-store', peerValue: median(peer.up), target: '>= 0.8x the peer' });
  ctx.rows.push({ ...row, metric: 'GET whole blob, verified', ours: median(ours.get), peer: 'fs.createReadStream piped', peerValue: median(peer.get) });
}

/** GETs `url` with the token and counts the body's bytes. */
function download(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
        if (res.statusCode !== 200) reject(new Error(`GET ${url}: ${res.statusCode}`));
        let n = 0;
        res.on('data', (d: Buffer) => (n += d.length));
        res.on('end', () => resolve(n));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}
