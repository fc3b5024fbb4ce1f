/**
 * The child process of test/crash.test.ts: it writes one blob while the
 * parent kills it with SIGKILL at random moments, then is started again.
 *
 *   node crash-child.js <store dir> <seed> <blob name> [run]
 *
 * Content is a pure function of (seed, blob name): the parent knows every
 * expected byte without hearing it from the child. The random choices (append
 * sizes, kinds, flushes, side blobs) come from (seed, name, size at start,
 * run), so a run is reproducible up to the moment of the kill.
 *
 * Lines on stdout, each one written only after the fact it states holds:
 *
 *   ready <size> <hash hex>     the writer resumed (or was created) at <size>
 *   flushed <size>              flush() resolved: bytes [0, size) are durable
 *   finalized <name> <hash hex> a small side blob was finalized
 *   final <hash hex>            the main blob was finalized (close() resolved)
 *
 * stdout to a pipe is synchronous on Linux, so a line is in the pipe before
 * the next step starts; a line lost to the kill only makes the parent's claim
 * weaker, never wrong.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import crypto from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { BlobStore, isCabError, toHex, type BlobWriter, type AppendItem } from '../../src/index.js';
import { prngBytes, prngInts } from '../../tools/data.js';

/** Largest single append (the issue asks for 1 B .. 300 KiB). */
export const MAX_APPEND = 300 * 1024;

/** A 32-bit integer from a string, for seeding prngInts. */
export function seedOf(...parts: Array<string | number>): number {
  return crypto.createHash('sha256').update(parts.join(':')).digest().readUInt32LE(0);
}

/** The main blob's whole content: 4 to 8 MiB, a function of (seed, name) only. */
export function mainContent(seed: number, name: string): Buffer {
  const total = 4 * 1024 * 1024 + prngInts(seedOf(seed, name, 'total'))(4 * 1024 * 1024 + 1);
  return prngBytes(`${seed}:${name}`, total);
}

/**
 * A side blob's content: up to 512 KiB; half of them are prefixes of one
 * shared stream, so side blobs deduplicate against each other (including
 * against the leftovers of side blobs a kill interrupted).
 */
export function sideContent(seed: number, name: string): Buffer {
  const rnd = prngInts(seedOf(seed, name, 'side'));
  const size = 1 + rnd(512 * 1024);
  return rnd(2) === 0 ? prngBytes(`${seed}:shared`, size) : prngBytes(`${seed}:${name}`, size);
}

/** Mostly small, sometimes large: log-uniform in [1, max]. */
function sizeFrom(rnd: (below: number) => number, max: number): number {
  return Math.max(1, Math.min(max, Math.floor(Math.exp((rnd(1_000_000) / 1_000_000) * Math.log(max + 1)))));
}

/** The content file for {file, offset, size} appends; written atomically so a kill leaves none or a whole one. */
async function contentFile(dir: string, name: string, content: Buffer): Promise<string> {
  const file = path.join(dir, `content-${name}.bin`);
  try {
    if ((await fs.stat(file)).size === content.length) return file;
  } catch {
    /* absent: write it */
  }
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, content);
  await fs.rename(tmp, file);
  return file;
}

/** Items that append content[from, from + n): bytes, file ranges, or a mix, sometimes with an empty item. */
function items(rnd: (below: number) => number, content: Buffer, file: string, from: number, n: number): AppendItem[] {
  const out: AppendItem[] = [];
  let at = from;
  const end = from + n;
  while (at < end) {
    const k = rnd(3) === 0 ? end - at : 1 + rnd(end - at);
    if (rnd(2) === 0) out.push(content.subarray(at, at + k));
    else out.push({ file, offset: at, size: k });
    at += k;
  }
  if (rnd(16) === 0) out.splice(rnd(out.length + 1), 0, rnd(2) ? new Uint8Array(0) : { file, offset: from, size: 0 });
  return out;
}

function say(line: string): void {
  process.stdout.write(line + '\n');
}

async function main(): Promise<void> {
  const [dir, seedArg, name, runArg] = process.argv.slice(2);
  if (!dir || !seedArg || !name) throw new Error('usage: crash-child <store dir> <seed> <blob name> [run]');
  const seed = Number(seedArg);
  const run = Number(runArg ?? 0);
  const content = mainContent(seed, name);
  const file = await contentFile(path.dirname(path.resolve(dir)), name, content);

  const pre = prngInts(seedOf(seed, name, run, 'open'));
  // Small fragments sometimes, so that the writer's own checkpoints (every fragmentSize bytes) are hit too.
  const fragmentSize = pre(3) === 0 ? 64 * 1024 + pre(2 * 1024 * 1024) : undefined;
  const store = await BlobStore.open(dir, fragmentSize ? { fragmentSize } : {});

  let w: BlobWriter;
  try {
    w = await store.resumeBlobWriter(name);
  } catch (e) {
    if (isCabError(e, 'ERR_BLOB_FINALIZED')) {
      // Finalized by a run killed before it could say so.
      const r = await store.newBlobReader(name);
      say(`final ${toHex(r.hash!)}`);
      await r.close();
      await store.close();
      return;
    }
    if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
    w = await store.newBlobWriter(name);
  }
  say(`ready ${w.size} ${toHex(w.hash)}`);

  const rnd = prngInts(seedOf(seed, name, w.size, run));
  const flushEvery = 2 + rnd(8);
  let pos = w.size;
  let side: { w: BlobWriter; content: Buffer; pos: number } | undefined;

  const sideStep = async (): Promise<void> => {
    if (!side) {
      const sw = await store.newBlobWriter();
      side = { w: sw, content: sideContent(seed, sw.name), pos: 0 };
      return;
    }
    if (side.pos < side.content.length) {
      const n = Math.min(side.content.length - side.pos, sizeFrom(rnd, 128 * 1024));
      await side.w.appendBytes(side.content.subarray(side.pos, side.pos + n));
      side.pos += n;
      if (rnd(4) === 0) await side.w.flush();
      return;
    }
    await side.w.close();
    say(`finalized ${side.w.name} ${toHex(side.w.hash)}`);
    side = undefined;
  };

  while (pos < content.length) {
    if (rnd(side ? 4 : 16) === 0) {
      await sideStep();
      continue;
    }
    // Sometimes several appends in flight before a flush: the writer must keep their order.
    const burst = rnd(4) === 0 ? 1 + rnd(3) : 1;
    const pending: Array<Promise<void>> = [];
    for (let i = 0; i < burst && pos < content.length; i++) {
      const n = Math.min(content.length - pos, sizeFrom(rnd, MAX_APPEND));
      pending.push(w.appendBytes(...items(rnd, content, file, pos, n)));
      pos += n;
    }
    if (rnd(flushEvery) === 0) {
      const upTo = pos;
      pending.push(w.flush().then(() => say(`flushed ${upTo}`)));
    }
    await Promise.all(pending);
  }
  while (side) await sideStep();
  if (w.size !== content.length) throw new Error(`writer size ${w.size}, expected ${content.length}`);
  await w.close();
  say(`final ${toHex(w.hash)}`);
  await store.close();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`crash-child: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(1);
  });
}
