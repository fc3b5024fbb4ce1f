import test from 'ava';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { BlobStore, chunk, isCabError, merkleRoot, sha256, toHex } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { mainContent, sideContent } from './helpers/crash-child.js';

/**
 * Crash test: a child process writes a blob (random append sizes and kinds,
 * random flushes, small side blobs it finalizes) and reports each completed
 * flush; we SIGKILL it at random moments, check the store, and start it
 * again so that it resumes. Reproduce a failure with CABSTORE_CRASH_SEED
 * (the kill moments themselves are timing, so a rerun is close, not exact).
 */
const KILLS = Number(process.env.CABSTORE_CRASH_KILLS ?? 30);
const SEED = process.env.CABSTORE_CRASH_SEED !== undefined ? Number(process.env.CABSTORE_CRASH_SEED) : crypto.randomInt(2 ** 31);
const CHILD = fileURLToPath(new URL('./helpers/crash-child.js', import.meta.url));
/** A child that has neither died nor finished by then is stuck. */
const RUN_LIMIT_MS = 60_000;
/** Finalized blobs whose bytes are re-read after each kill (all are checked by hash). */
const BYTE_CHECKS = 3;

type KillPlan =
  | { at: 'spawn'; ms: number } // during start-up, open or resume
  | { at: 'ready'; ms: number } // while appending and flushing
  | { at: 'flushed'; nth: number } // the moment the nth flush is reported
  | { at: 'never' };

interface Run {
  killed: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  lines: string[];
}

function pickPlan(rnd: (below: number) => number): KillPlan {
  const r = rnd(100);
  if (r < 15) return { at: 'spawn', ms: rnd(400) };
  if (r < 40) return { at: 'flushed', nth: 1 + rnd(3) };
  return { at: 'ready', ms: 5 + rnd(146) };
}

/** Runs the child, calling onLine for each stdout line in order, and kills it per plan. */
function runChild(args: string[], plan: KillPlan, onLine: (line: string) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const run: Run = { killed: false, code: null, signal: null, stderr: '', lines: [] };
    const timers: NodeJS.Timeout[] = [];
    const kill = () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    };
    const later = (ms: number) => timers.push(setTimeout(kill, ms));
    timers.push(
      setTimeout(() => {
        run.stderr += `\n[crash test] child still running after ${RUN_LIMIT_MS} ms: killed`;
        kill();
      }, RUN_LIMIT_MS),
    );
    if (plan.at === 'spawn') later(plan.ms);
    let flushes = 0;
    let rest = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (s: string) => {
      const parts = (rest + s).split('\n');
      rest = parts.pop()!;
      for (const line of parts) {
        run.lines.push(line);
        onLine(line);
        if (line.startsWith('ready ') && plan.at === 'ready') later(plan.ms);
        if (line.startsWith('flushed ') && plan.at === 'flushed' && ++flushes === plan.nth) kill();
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => (run.stderr += s));
    child.on('error', reject);
    // 'close' comes after stdout ended: every line the child wrote before dying has been seen.
    child.on('close', (code, signal) => {
      for (const t of timers) clearTimeout(t);
      if (rest) run.lines.push(rest);
      run.code = code;
      run.signal = signal;
      run.killed = signal === 'SIGKILL';
      resolve(run);
    });
  });
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/**
 * The chunk index agrees with the bytes: the blob's chunks are the first
 * chunks of its whole content (boundaries depend only on content, however the
 * blob was written and resumed), each hash is the SHA-256 of its range, all of
 * them once finalized; and lookupChunk finds a copy of one of them.
 */
async function checkChunks(s: BlobStore, name: string, bytes: Buffer, finalized: boolean, want: number[], pick: number): Promise<string | undefined> {
  const got: Array<{ hash: Uint8Array; size: number }> = [];
  for await (const c of s.blobChunkStream(name)) got.push(c);
  let off = 0;
  for (let i = 0; i < got.length; i++) {
    const c = got[i]!;
    if (c.size !== want[i]) return `chunk ${i} of ${name} has size ${c.size}, the content's chunk ${i} has ${want[i]}`;
    if (off + c.size > bytes.length) return `chunk ${i} of ${name} ends at ${off + c.size}, past the blob's ${bytes.length} bytes`;
    if (toHex(c.hash) !== toHex(sha256(bytes.subarray(off, off + c.size)))) return `chunk ${i} of ${name} at ${off}: hash is not the SHA-256 of its bytes`;
    off += c.size;
  }
  if (finalized && (got.length !== want.length || off !== bytes.length)) return `finalized ${name} has ${got.length} chunks over ${off} bytes, want ${want.length} over ${bytes.length}`;
  if (got.length === 0) return undefined;
  const c = got[pick % got.length]!;
  const loc = await s.lookupChunk(c.hash);
  const r = await s.newBlobReader(loc.blob);
  try {
    const buf = Buffer.alloc(loc.size);
    if (loc.size !== c.size || loc.offset + loc.size > r.size) return `lookupChunk gave ${JSON.stringify(loc)} for a chunk of ${c.size} bytes`;
    await r.readAt(buf, loc.offset);
    if (toHex(sha256(buf)) !== toHex(c.hash)) return `lookupChunk gave ${JSON.stringify(loc)}, whose bytes do not hash to the chunk`;
  } finally {
    await r.close();
  }
  return undefined;
}

async function readAll(s: BlobStore, name: string): Promise<{ size: number; finalized: boolean; hash?: string; bytes: Buffer }> {
  const r = await s.newBlobReader(name);
  try {
    const bytes = Buffer.alloc(r.size);
    let at = 0;
    while (at < r.size) {
      const n = await r.readAt(bytes.subarray(at), at);
      if (n === 0) throw new Error(`reader of ${name} returned 0 at ${at} of ${r.size}`);
      at += n;
    }
    return { size: r.size, finalized: r.isFinalized, hash: r.hash && toHex(r.hash), bytes };
  } finally {
    await r.close();
  }
}

test(`SIGKILL at random moments loses no flushed byte (seed ${SEED}, ${KILLS} kills)`, async (t) => {
  t.timeout(60_000 + KILLS * 3_000);
  const rnd = prngInts(SEED);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'cabstore-crash-'));
  const storeDir = path.join(dir, 'store');
  const finalized = new Map<string, { kind: 'main' | 'side'; hash: string }>();
  const mainNames: string[] = [];
  let blobNo = 0;
  let name = '';
  let expected: Buffer = Buffer.alloc(0);
  let expectedChunks: number[] = [];
  let lastFlushed = 0; // the largest size a child reported as flushed (or the parent made durable)
  let created = false; // a child reported `ready` for this blob: its descriptor exists
  let doneHash: string | undefined; // a child reported `final`
  let kills = 0;
  let runs = 0;
  let step = '';
  const stats = { flushed: 0, beforeReady: 0, onFlush: 0, parentResumes: 0, gcs: 0 };
  let plan: KillPlan = { at: 'never' };
  const problems: string[] = [];
  const where = () => `seed ${SEED}, run ${runs}, kill ${kills}, blob ${name}, ${step}, store ${storeDir}`;
  const check = (ok: boolean, msg: string) => {
    if (!ok) problems.push(`${msg} (${where()})`);
  };
  const assertNoProblems = () => {
    if (problems.length > 0) throw new Error(`crash test failed:\n  ${problems.join('\n  ')}`);
  };

  const nextBlob = () => {
    name = prngBytes(`${SEED}:blob:${blobNo++}`, 16).toString('hex');
    mainNames.push(name);
    expected = mainContent(SEED, name);
    expectedChunks = chunk(expected);
    lastFlushed = 0;
    created = false;
    doneHash = undefined;
  };

  const onLine = (line: string) => {
    const [what, a, b] = line.split(' ');
    if (what === 'ready') {
      const size = Number(a);
      check(size >= lastFlushed, `resumed at ${size}, but ${lastFlushed} bytes were flushed`);
      check(size <= expected.length, `resumed at ${size}, past the content's ${expected.length}`);
      if (size <= expected.length) check(b === toHex(merkleRoot(expected.subarray(0, size))), `resumed writer's hash at ${size} is ${b}, not the hash of the prefix`);
      created = true;
    } else if (what === 'flushed') {
      const size = Number(a);
      check(size >= lastFlushed, `flushed ${size} after ${lastFlushed}`);
      stats.flushed++;
      lastFlushed = Math.max(lastFlushed, size);
    } else if (what === 'finalized') {
      check(!finalized.has(a!), `side blob ${a} finalized twice`);
      check(b === toHex(merkleRoot(sideContent(SEED, a!))), `side blob ${a} finalized with hash ${b}, not the hash of its content`);
      finalized.set(a!, { kind: 'side', hash: b! });
    } else if (what === 'final') {
      doneHash = a;
    } else {
      check(false, `unexpected line from the child: ${JSON.stringify(line)}`);
    }
  };

  /** What must hold after any kill, seen from a fresh open of the store. */
  const verify = async () => {
    step = 'open after kill';
    const s = await BlobStore.open(storeDir);
    try {
      if (rnd(3) === 0) {
        // GC with the dead child's lease and temp files about: it must keep every byte checked below.
        step = 'gc after kill';
        await s.gc();
        stats.gcs++;
        const left = await fs.readdir(path.join(storeDir, 'tmp'));
        check(left.length === 0, `gc left temp files of dead processes: ${left.join(' ')}`);
        // Only this process is alive: what is left of the children's leases is litter.
        const leases = (await fs.readdir(path.join(storeDir, 'leases'))).filter((f) => /^\d+-/.test(f) && !f.startsWith(`${process.pid}-`));
        check(leases.length === 0, `gc left lease files of dead processes: ${leases.join(' ')}`);
      }
      // A kill -9 leaves nothing for fsck to find but a torn last record (a write cut short by the
      // kill, which the format expects and the next resume truncates); the reads below check that
      // it cost no flushed byte.
      step = 'fsck after kill';
      const report = await s.fsck();
      for (const p of report.problems) check(p.kind === 'torn-descriptor', `fsck: ${p.kind} ${p.blob ?? p.fragment ?? ''} ${p.detail}`);
      step = 'read the blob being written';
      let cur: Awaited<ReturnType<typeof readAll>> | undefined;
      try {
        cur = await readAll(s, name);
      } catch (e) {
        if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
        check(!created, `blob vanished after the child reported it ready`);
      }
      if (cur) {
        check(cur.size >= lastFlushed, `reader size ${cur.size} < last flushed ${lastFlushed}`);
        check(cur.size <= expected.length, `reader size ${cur.size} > content size ${expected.length}`);
        const at = firstDifference(cur.bytes, expected);
        check(at >= Math.min(cur.size, expected.length), `byte ${at} of ${cur.size} differs from the content`);
        step = 'check the chunk index of the blob being written';
        const bad = await checkChunks(s, name, cur.bytes, cur.finalized, expectedChunks, rnd(1 << 30));
        check(bad === undefined, bad!);
        if (cur.finalized) {
          check(cur.size === expected.length, `finalized at ${cur.size}, not ${expected.length}`);
          check(cur.hash === toHex(merkleRoot(expected)), `finalized with hash ${cur.hash}`);
        } else if (created && rnd(3) === 0) {
          // Resume here, in another process than the writer's, and leave a little more, durably.
          step = 'resume in the parent';
          const w = await s.resumeBlobWriter(name);
          stats.parentResumes++;
          check(w.size === cur.size, `resumed writer at ${w.size}, reader saw ${cur.size}`);
          check(toHex(w.hash) === toHex(merkleRoot(expected.subarray(0, w.size))), `resumed writer's hash at ${w.size} is not the prefix's`);
          const n = Math.min(expected.length - w.size, rnd(64 * 1024));
          await w.appendBytes(expected.subarray(w.size, w.size + n));
          const size = w.size;
          await w.closeWithoutFinalize();
          lastFlushed = Math.max(lastFlushed, size);
        }
      }

      step = 'check finalized blobs';
      const all = [...finalized];
      const deep = new Set<string>();
      if (all.length > 0) deep.add(all[all.length - 1]![0]);
      while (deep.size < Math.min(BYTE_CHECKS, all.length)) deep.add(all[rnd(all.length)]![0]);
      for (const [n, f] of all) {
        if (!deep.has(n)) {
          const r = await s.newBlobReader(n);
          check(r.isFinalized && r.hash !== undefined && toHex(r.hash) === f.hash, `finalized ${f.kind} blob ${n} changed: hash ${r.hash && toHex(r.hash)}, was ${f.hash}`);
          await r.close();
          continue;
        }
        const want = f.kind === 'side' ? sideContent(SEED, n) : mainContent(SEED, n);
        const got = await readAll(s, n);
        check(got.finalized && got.hash === f.hash, `finalized ${f.kind} blob ${n} changed: hash ${got.hash}, was ${f.hash}`);
        check(got.size === want.length && firstDifference(got.bytes, want) === want.length, `finalized ${f.kind} blob ${n} bytes changed (size ${got.size}, want ${want.length}, first difference at ${firstDifference(got.bytes, want)})`);
        const bad = await checkChunks(s, n, got.bytes, true, chunk(want), rnd(1 << 30));
        check(bad === undefined, bad!);
      }
    } finally {
      await s.close();
    }
    assertNoProblems();
  };

  const childRun = async (plan: KillPlan) => {
    step = `child run (${JSON.stringify(plan)})`;
    const r = await runChild([storeDir, String(SEED), name, String(runs++)], plan, onLine);
    assertNoProblems();
    if (r.killed && r.stderr.includes('[crash test]')) throw new Error(`${r.stderr} (${where()})`);
    if (!r.killed && r.code !== 0) throw new Error(`child exited with code ${r.code} signal ${r.signal} (${where()}):\n${r.stderr}`);
    return r;
  };

  /** The child finished the blob: check it, remember it, and start the next one. */
  const blobDone = () => {
    t.is(doneHash, toHex(merkleRoot(expected)), `final hash of ${name} (${where()})`);
    finalized.set(name, { kind: 'main', hash: doneHash! });
  };

  const started = Date.now();
  try {
    nextBlob();
    while (kills < KILLS) {
      plan = pickPlan(rnd);
      const r = await childRun(plan);
      if (r.killed) {
        kills++;
        if (!r.lines.some((l) => l.startsWith('ready '))) stats.beforeReady++;
        if (plan.at === 'flushed' && r.lines[r.lines.length - 1]?.startsWith('flushed ')) stats.onFlush++;
      }
      await verify();
      if (doneHash !== undefined) {
        blobDone();
        nextBlob();
      }
    }

    // The end: the current blob, begun and killed at least once, is resumed and finished.
    step = 'finish';
    while (!created || doneHash !== undefined) {
      if (doneHash !== undefined) {
        blobDone();
        nextBlob();
      }
      const r = await childRun({ at: 'ready', ms: 5 + rnd(50) });
      if (r.killed) kills++;
      await verify();
    }
    const r = await childRun({ at: 'never' });
    t.false(r.killed);
    t.truthy(doneHash, `the last run reported no final hash (${where()})`);
    blobDone();
    await verify();

    step = 'after the end';
    const s = await BlobStore.open(storeDir);
    try {
      const e = await t.throwsAsync(s.resumeBlobWriter(name));
      t.true(isCabError(e, 'ERR_BLOB_FINALIZED'), `resume of a finalized blob: ${String(e)} (${where()})`);
      const got = await readAll(s, name);
      t.true(got.finalized);
      t.is(got.hash, toHex(merkleRoot(expected)));
      t.is(firstDifference(got.bytes, expected), expected.length);
    } finally {
      await s.close();
    }
    t.true(kills >= KILLS);
    const sides = [...finalized.values()].filter((f) => f.kind === 'side').length;
    t.log(`seed ${SEED}: ${kills} kills over ${runs} runs, ${mainNames.length} main blobs (${finalized.size - sides} finished), ${sides} side blobs; ${stats.flushed} flushes reported, ${stats.beforeReady} kills before ready, ${stats.onFlush} right after a flush, ${stats.parentResumes} resumes in the parent, ${stats.gcs} GCs; ${Date.now() - started} ms`);
    await fs.rm(dir, { recursive: true, force: true });
  } catch (e) {
    t.log(`crash test failed with seed ${SEED} (rerun with CABSTORE_CRASH_SEED=${SEED}); the store is kept at ${storeDir}`);
    throw e;
  }
});
