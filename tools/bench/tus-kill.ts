// The tus-kill case (issue 18's acceptance run), and the pieces its smaller
// twin in test/http-kill.test.ts uses: a tus upload through tus-js-client
// while `cabstore serve` (a child process) is killed with SIGKILL and started
// again, through a proxy that counts the bytes on the wire. The upload must
// complete with the file's root and put at most 1.1x the file on the wire;
// the same file uploaded again must add (almost) no fragment bytes and give
// the same root.
import fs from 'node:fs';
import path from 'node:path';
import { Upload } from 'tus-js-client';
import { BlobStore, MerkleHasher, toHex } from '../../src/index.js';
import { tcpProxy, type TcpProxy } from '../proxy.js';
import { type BenchContext, MB, median } from './harness.js';
import { dataFile } from './files.js';
import { BENCH_TOKEN, serveStore, type Served } from './processes.js';

const MiB = 2 ** 20;
/** The acceptance run's size and kills. */
const SIZE = 512 * MiB;
const KILLS = 3;
/** tus-js-client's waits between tries: enough to outlast a restart of the server on a loaded machine. */
export const RETRY_DELAYS = [100, 200, 400, 800, 1000, 2000, 2000, 4000, 4000, 8000, 8000];

/**
 * `cabstore serve` of a store (read and write for BENCH_TOKEN) behind a
 * proxy that counts bytes each way: `kill()` SIGKILLs the server and starts
 * it again (on a new port; the proxy's port, which clients use, stays).
 */
export class KillableServer {
  #srv: Served;
  readonly #proxy: TcpProxy;
  readonly #root: string;
  readonly #workDir: string;
  /** Times killed. */
  kills = 0;

  private constructor(srv: Served, proxy: TcpProxy, root: string, workDir: string) {
    this.#srv = srv;
    this.#proxy = proxy;
    this.#root = root;
    this.#workDir = workDir;
  }

  static async start(root: string, workDir: string): Promise<KillableServer> {
    const srv = await serveStore(root, workDir, 'read,write');
    const box: { s?: KillableServer } = {};
    const proxy = await tcpProxy(() => box.s!.#srv.port);
    box.s = new KillableServer(srv, proxy, root, workDir);
    return box.s;
  }

  /** The tus endpoint, through the proxy. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.#proxy.port}/files/`;
  }

  /** Client-to-server bytes through the proxy so far (requests, headers and bodies). */
  get wireUp(): number {
    return this.#proxy.totalUp;
  }

  async kill(): Promise<void> {
    const c = this.#srv.child;
    if (c.exitCode === null && c.signalCode === null) {
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await exited;
    }
    this.kills++;
    this.#srv = await serveStore(this.#root, this.#workDir, 'read,write');
  }

  async stop(): Promise<void> {
    await this.#proxy.close();
    await this.#srv.stop();
  }
}

export interface TusRun {
  /** The blob's name (the last part of the upload's URL). */
  name: string;
  /** Body bytes the client sent, counting those sent again after a resume. */
  body: number;
  /** Each resume: the offset the server gave, and how far the client had sent. */
  resumes: Array<{ at: number; had: number }>;
  secs: number;
}

/**
 * Uploads `file` with tus-js-client (one PATCH while nothing fails); `onProgress`
 * is told the absolute offset as bytes leave (it starts again from the
 * server's offset after a resume).
 */
export function tusUploadFile(endpoint: string, file: string, o: { token?: string; retryDelays?: number[]; onProgress?: (sent: number) => void } = {}): Promise<TusRun> {
  const size = fs.statSync(file).size;
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    let body = 0;
    let last = 0;
    const resumes: TusRun['resumes'] = [];
    const up = new Upload(fs.createReadStream(file), {
      endpoint,
      uploadSize: size,
      headers: { Authorization: `Bearer ${o.token ?? BENCH_TOKEN}` },
      retryDelays: o.retryDelays ?? [],
      onProgress: (sent) => {
        if (sent > last) body += sent - last;
        else if (sent < last) resumes.push({ at: sent, had: last });
        last = sent;
        o.onProgress?.(sent);
      },
      onError: reject,
      onSuccess: () => resolve({ name: up.url!.split('/').pop()!, body, resumes, secs: (performance.now() - t0) / 1000 }),
    });
    up.start();
  });
}

export interface KilledUpload extends TusRun {
  /** Client-to-server bytes through the proxy for this upload. */
  wire: number;
  kills: number;
}

/**
 * Uploads `file` to `srv`, killing the server (SIGKILL, then started again)
 * once the client has sent each fraction in `killAt` of the file; resolves
 * once the upload has completed and every restart is done.
 */
export async function uploadThroughKills(srv: KillableServer, file: string, killAt: number[], mayKill: () => boolean = () => true): Promise<KilledUpload> {
  const size = fs.statSync(file).size;
  const marks = killAt.map((f) => Math.floor(f * size));
  const wire0 = srv.wireUp;
  const kills0 = srv.kills;
  const restarts: Array<Promise<void>> = [];
  let restarting = false;
  const run = await tusUploadFile(srv.endpoint, file, {
    retryDelays: RETRY_DELAYS,
    onProgress: (sent) => {
      // One kill at a time: the next mark counts only once the server is back.
      if (restarting || marks.length === 0 || sent < marks[0]! || !mayKill()) return;
      marks.shift();
      restarting = true;
      restarts.push(srv.kill().finally(() => (restarting = false)));
    },
  });
  await Promise.all(restarts);
  return { ...run, wire: srv.wireUp - wire0, kills: srv.kills - kills0 };
}

/** The BEP 52 root of a file, read in pieces (memory stays small whatever its size). */
export async function fileRoot(file: string): Promise<string> {
  const h = new MerkleHasher();
  for await (const piece of fs.createReadStream(file, { highWaterMark: 4 * MiB })) h.update(piece as Buffer);
  return toHex(h.digest());
}

/** Bytes of a store's fragment files. */
export function fragmentBytes(root: string): number {
  let n = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else n += fs.statSync(p).size;
    }
  };
  walk(path.join(root, 'cas'));
  return n;
}

/** A finalized blob's root in hex, as the store on disk says (the server is a separate process; the store opens beside it). */
export async function blobRoot(root: string, name: string): Promise<string | undefined> {
  const store = await BlobStore.open(root);
  try {
    const st = await store.stat(name);
    return st.finalized && st.hash ? toHex(st.hash) : undefined;
  } finally {
    await store.close();
  }
}

export async function benchTusKill(ctx: BenchContext): Promise<void> {
  const file = await dataFile(ctx, 'tus-kill', SIZE);
  const want = await fileRoot(file);
  const killAt = Array.from({ length: KILLS }, (_, i) => (i + 1) / (KILLS + 1));
  const wire: number[] = [];
  const lost: number[] = [];
  const secs: number[] = [];
  const again: number[] = [];
  const grew: number[] = [];
  for (let i = 0; i < ctx.runs; i++) {
    const dir = path.join(ctx.workDir, `tus-kill-store-${i}`);
    fs.rmSync(dir, { recursive: true, force: true });
    await (await BlobStore.open(dir, { create: true })).close();
    const srv = await KillableServer.start(dir, ctx.workDir);
    try {
      const up = await uploadThroughKills(srv, file, killAt);
      if (up.kills !== KILLS) throw new Error(`tus-kill: ${up.kills} kills, not ${KILLS}`);
      const root = await blobRoot(dir, up.name);
      if (root !== want) throw new Error(`tus-kill: the blob's root is ${root}, the file's ${want}`);
      wire.push(up.wire / SIZE);
      lost.push((up.body - SIZE) / up.kills / MiB);
      secs.push(up.secs);
      // The same file again, nothing killed: stored once, the same root.
      const before = fragmentBytes(dir);
      const second = await uploadThroughKills(srv, file, []);
      const root2 = await blobRoot(dir, second.name);
      if (second.name === up.name || root2 !== want) throw new Error(`tus-kill: the second upload's root is ${root2}, the file's ${want}`);
      grew.push((fragmentBytes(dir) - before) / MB);
      again.push(SIZE / MB / second.secs);
      ctx.log(`run ${i + 1}: ${up.kills} kills, resumed at ${up.resumes.map((r) => `${(r.at / MiB).toFixed(1)} (had sent ${(r.had / MiB).toFixed(1)})`).join(', ')} MiB; wire ${(up.wire / SIZE).toFixed(3)}x in ${up.secs.toFixed(1)} s; again: +${grew[i]!.toFixed(2)} MB of fragments`);
    } finally {
      await srv.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
  const row = { case: `tus-kill ${SIZE / MiB} MiB`, higherIsBetter: false, note: `${KILLS} SIGKILLs of cabstore serve, tus-js-client resuming` };
  ctx.rows.push({ ...row, metric: `bytes on the wire / file, ${KILLS} SIGKILLs (worst of ${ctx.runs})`, unit: 'x', ours: Math.max(...wire), target: '<= 1.1x' });
  ctx.rows.push({ ...row, metric: 'body bytes sent again per kill (median)', unit: 'MiB', ours: median(lost) });
  ctx.rows.push({ ...row, metric: 'upload through the kills, wall (median)', unit: 's', ours: median(secs) });
  ctx.rows.push({ ...row, metric: 'same file again: fragment bytes added (worst)', unit: 'MB', ours: Math.max(...grew), target: '~0 (stored once)' });
  ctx.rows.push({ ...row, metric: 'same file again, all chunks known (median)', unit: 'MB/s', higherIsBetter: true, ours: median(again) });
}
