// The semantics DESIGN.md pins down for the local store: chunk lists that do
// not depend on how a blob was written, dedup, appendBlob by reference,
// lookupChunk and recipes, an in-process transfer between two stores, error
// codes that change nothing, locks across processes, ERR_CLOSED, torn
// descriptor tails and an index rebuilt from scratch.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { BlobStore, BlobReader, CabError, Chunker, chunk, merkleRoot, sha256, toHex, type ChunkRef, type RecipeStep } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { descriptorPath, fragmentPath, tmpDir, indexDir } from './helpers/paths.js';

const KiB = 1024;
const MiB = 1024 * 1024;

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-semantics-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function openStore(t: ExecutionContext, root?: string): Promise<BlobStore> {
  const store = await BlobStore.open(root ?? path.join(tempDir(t), 'store'));
  t.teardown(() => store.close());
  return store;
}

/** The code of what `fn` threw or rejected with; async APIs must reject, not throw synchronously. */
async function codeOf(fn: () => unknown): Promise<string> {
  let p: unknown;
  try {
    p = fn();
  } catch (e) {
    return `threw synchronously: ${describe(e)}`;
  }
  try {
    await p;
  } catch (e) {
    return describe(e);
  }
  return 'no error';
}

function describe(e: unknown): string {
  return e instanceof CabError ? e.code : `not a CabError: ${String(e)}`;
}

async function drain<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** The chunk list DESIGN.md promises: chunker sizes, SHA-256 of each range. */
function expectedChunks(bytes: Uint8Array): Array<[string, number]> {
  let off = 0;
  return chunk(bytes).map((s) => {
    const ref: [string, number] = [toHex(sha256(bytes.subarray(off, off + s))), s];
    off += s;
    return ref;
  });
}

async function chunkList(store: BlobStore, name: string): Promise<Array<[string, number]>> {
  return (await drain(store.blobChunkStream(name))).map((c) => [toHex(c.hash), c.size]);
}

async function readAll(store: BlobStore, name: string): Promise<Buffer> {
  const r = await store.newBlobReader(name);
  try {
    const buf = Buffer.alloc(r.size);
    const n = await r.readAt(buf, 0);
    return buf.subarray(0, n);
  } finally {
    await r.close();
  }
}

async function writeBlob(store: BlobStore, bytes: Uint8Array, name?: string): Promise<string> {
  const w = await store.newBlobWriter(name);
  await w.appendBytes(bytes);
  await w.close();
  return w.name;
}

/** Total bytes of the fragments under cas/, and their ids. */
async function casUsage(store: BlobStore): Promise<{ bytes: number; ids: string[] }> {
  let bytes = 0;
  const ids: string[] = [];
  for await (const id of store.listCaIds()) {
    ids.push(id);
    bytes += fs.statSync(fragmentPath(store, id)).size;
  }
  return { bytes, ids: ids.sort() };
}

/**
 * Every directory and file (with its size) under `root`, sorted. Files under
 * leases/ are listed by name only: a process's pins file is rewritten as its
 * readers and writers come and go, which is bookkeeping, not store content.
 */
function listing(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string) => {
    for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, ent.name);
      const r = rel ? `${rel}/${ent.name}` : ent.name;
      if (ent.isDirectory()) {
        out.push(`${r}/`);
        walk(p, r);
      } else {
        out.push(r.startsWith('leases/') ? r : `${r} ${fs.statSync(p).size}`);
      }
    }
  };
  walk(root, '');
  return out.sort();
}

// ---------------------------------------------------------------------------
// Chunk lists

/** Writes `data` into `store` in one of several ways; returns the blob name. */
async function writeVia(store: BlobStore, dir: string, how: string, data: Buffer): Promise<string> {
  const rnd = prngInts(how.length * 31 + 7);
  switch (how) {
    case 'one appendBytes':
      return writeBlob(store, data);
    case '8 KiB appends, resumed every 7th': {
      let w = await store.newBlobWriter();
      for (let i = 0, off = 0; off < data.length; i++, off += 8 * KiB) {
        if (i > 0 && i % 7 === 0) {
          await w.closeWithoutFinalize();
          w = await store.resumeBlobWriter(w.name);
        }
        await w.appendBytes(data.subarray(off, off + 8 * KiB));
      }
      await w.close();
      return w.name;
    }
    case 'file ranges': {
      const file = path.join(dir, `src-${store.root.length}-${Date.now()}.bin`);
      const pad = 4321;
      fs.writeFileSync(file, Buffer.concat([prngBytes('file pad', pad), data, prngBytes('file tail', 999)]));
      const w = await store.newBlobWriter();
      let off = 0;
      while (off < data.length) {
        const items = [];
        for (let k = 0; k < 3 && off < data.length; k++) {
          const n = Math.min(data.length - off, 1 + rnd(150 * KiB));
          items.push({ file, offset: pad + off, size: n });
          off += n;
        }
        await w.appendBytes(...items);
      }
      await w.close();
      return w.name;
    }
    case 'appendBlob ranges': {
      const pad = 777;
      const src = await writeBlob(store, Buffer.concat([prngBytes('blob pad', pad), data, prngBytes('blob tail', 5000)]));
      let w = await store.newBlobWriter();
      let off = 0;
      for (let i = 0; off < data.length; i++) {
        if (i === 3) {
          await w.closeWithoutFinalize();
          w = await store.resumeBlobWriter(w.name);
        }
        const n = Math.min(data.length - off, 1 + rnd(200 * KiB));
        await w.appendBlob(src, pad + off, n);
        off += n;
      }
      await w.close();
      return w.name;
    }
    default:
      throw new Error(how);
  }
}

const WAYS = ['one appendBytes', '8 KiB appends, resumed every 7th', 'file ranges', 'appendBlob ranges'];

test('the chunk list is the same however the blob was written', async (t) => {
  const dir = tempDir(t);
  const data = prngBytes('chunk lists', MiB);
  const want = expectedChunks(data);
  t.true(want.length >= 8, `${want.length} chunks`);
  const wantHash = toHex(merkleRoot(data));
  // Each way alone in a fresh store (no dedup), then all of them in one store (dedup).
  const shared = await openStore(t, path.join(dir, 'shared'));
  for (const how of WAYS) {
    const alone = await openStore(t, path.join(dir, how.replace(/\W+/g, '-')));
    for (const [store, where] of [
      [alone, 'alone'],
      [shared, 'shared'],
    ] as const) {
      const name = await writeVia(store, dir, how, data);
      const got = await chunkList(store, name);
      t.deepEqual(got, want, `${how} (${where})`);
      t.is(
        got.reduce((s, [, n]) => s + n, 0),
        data.length,
        `${how} (${where}): sizes sum to the blob size`,
      );
      t.true((await readAll(store, name)).equals(data), `${how} (${where}): content`);
      const r = await store.newBlobReader(name);
      t.is(r.hash && toHex(r.hash), wantHash, `${how} (${where}): hash`);
      await r.close();
    }
  }
});

// ---------------------------------------------------------------------------
// Storage

test('appendBytes deduplicates: an edited copy adds < 10% of its size, an identical copy adds nothing', async (t) => {
  const store = await openStore(t);
  const base = prngBytes('dedup base', 8 * MiB);
  await writeBlob(store, base);
  const first = await casUsage(store);
  t.true(first.bytes >= base.length, `the first blob stores its bytes (${first.bytes})`);

  const edited = Buffer.concat([
    base.subarray(0, 1 * MiB),
    Buffer.from('an insertion of a few bytes in the middle of the blob'),
    base.subarray(1 * MiB, 4 * MiB),
    base.subarray(4 * MiB + 5000, 6 * MiB), // 5000 bytes deleted
    prngBytes('overwrite', 300),
    base.subarray(6 * MiB + 300), // 300 bytes overwritten
  ]);
  const e = await writeBlob(store, edited);
  const second = await casUsage(store);
  const grew = second.bytes - first.bytes;
  t.true(grew > 0, 'the edits are new bytes');
  t.true(grew < 0.1 * 8 * MiB, `storage grew by ${grew} bytes`);
  t.true((await readAll(store, e)).equals(edited));

  // The same content again, in appends that do not line up with chunks.
  const w = await store.newBlobWriter();
  for (let off = 0; off < base.length; off += 100_000) await w.appendBytes(base.subarray(off, off + 100_000));
  await w.close();
  const third = await casUsage(store);
  t.is(third.bytes, second.bytes, 'an identical blob adds no fragment bytes');
  t.deepEqual(third.ids, second.ids, 'nor fragments');
  t.is(toHex(w.hash), toHex(merkleRoot(base)));
  t.true((await readAll(store, w.name)).equals(base));
  t.deepEqual(fs.readdirSync(tmpDir(store)), [], 'no temp files left');
});

test('a flush inside a chunk writes the chunk\'s bytes before it, and the rest of the chunk is still deduplicated', async (t) => {
  const store = await openStore(t);
  const base = prngBytes('dedup base', 8 * MiB);
  await writeBlob(store, base);
  const before = await casUsage(store);
  // Flushes at 1 MiB + 777 bytes apart: each lands inside a chunk, whose bytes so far it must make durable.
  const step = MiB + 777;
  let end = 0;
  const ends = chunk(base).map((size) => (end += size));
  let committed = 0;
  const w = await store.newBlobWriter();
  for (let off = 0; off < base.length; off += step) {
    await w.appendBytes(base.subarray(off, off + step));
    const at = Math.min(off + step, base.length);
    if (at === base.length) break;
    await w.flush();
    const start = [0, ...ends].filter((e) => e <= at).pop()!;
    committed += at - start;
  }
  await w.close();
  const grew = (await casUsage(store)).bytes - before.bytes;
  t.true(committed > 0);
  t.is(grew, committed, 'only the bytes each flush made durable ahead of their chunk are stored again');
  t.is(toHex(w.hash), toHex(merkleRoot(base)));
  t.true((await readAll(store, w.name)).equals(base));
});

test('appendBlob copies no bytes', async (t) => {
  const store = await openStore(t);
  const data = prngBytes('appendBlob no copy', MiB);
  const src = await writeBlob(store, data);
  const before = await casUsage(store);
  let w = await store.newBlobWriter();
  await w.appendBlob(src, 512 * KiB);
  await w.appendBlob(src, 0, 300 * KiB);
  await w.closeWithoutFinalize();
  w = await store.resumeBlobWriter(w.name);
  await w.appendBlob(src, 300 * KiB, 212 * KiB);
  await w.appendBlob(src, 1000, 5000);
  await w.close();
  const expected = Buffer.concat([data.subarray(512 * KiB), data.subarray(0, 512 * KiB), data.subarray(1000, 6000)]);
  const after = await casUsage(store);
  t.deepEqual(after, before, 'cas/ is unchanged');
  t.true((await readAll(store, w.name)).equals(expected));
  t.is(toHex(w.hash), toHex(merkleRoot(expected)));
  t.deepEqual(await chunkList(store, w.name), expectedChunks(expected));
});

// ---------------------------------------------------------------------------
// lookupChunk and recipes

async function checkLocation(t: ExecutionContext, store: BlobStore, c: ChunkRef, allowed: string[], what: string): Promise<void> {
  const loc = await store.lookupChunk(c.hash);
  t.true(allowed.includes(loc.blob), `${what}: location in ${loc.blob}, expected one of ${allowed.join(', ')}`);
  t.is(loc.size, c.size, what);
  const r = await store.newBlobReader(loc.blob);
  try {
    const buf = Buffer.alloc(loc.size);
    t.is(await r.readAt(buf, loc.offset), loc.size, what);
    t.is(toHex(sha256(buf)), toHex(c.hash), `${what}: the location's bytes hash to the chunk`);
  } finally {
    await r.close();
  }
}

test('lookupChunk finds each chunk, never in a deleted blob', async (t) => {
  const store = await openStore(t);
  const data = prngBytes('lookup', MiB);
  const x = await writeBlob(store, data);
  const chunks = await drain(store.blobChunkStream(x));
  t.true(chunks.length >= 8);
  for (const [i, c] of chunks.entries()) await checkLocation(t, store, c, [x], `chunk ${i}`);
  t.is(await codeOf(() => store.lookupChunk(sha256(Buffer.from('no such chunk')))), 'ERR_NO_SUCH_CHUNK');
  t.is(await codeOf(() => store.lookupChunk(new Uint8Array(31))), 'ERR_BAD_ARGUMENT');

  const y = await writeBlob(store, data);
  const z = await writeBlob(store, data);
  for (const [i, c] of chunks.entries()) await checkLocation(t, store, c, [x, y, z], `3 copies, chunk ${i}`);
  await store.deleteBlob(x);
  for (const [i, c] of chunks.entries()) await checkLocation(t, store, c, [y, z], `x deleted, chunk ${i}`);
  // A crash between the unlink of a descriptor and the index update leaves index entries behind.
  fs.unlinkSync(descriptorPath(store, z));
  for (const [i, c] of chunks.entries()) await checkLocation(t, store, c, [y], `z unlinked, chunk ${i}`);
  await store.deleteBlob(y);
  for (const [i, c] of chunks.entries()) t.is(await codeOf(() => store.lookupChunk(c.hash)), 'ERR_NO_SUCH_CHUNK', `all deleted, chunk ${i}`);
});

function stepView(s: RecipeStep): string {
  return s.kind === 'blob' ? `blob ${s.blob} ${s.offset} ${s.size}` : `chunk ${toHex(s.hash)} ${s.size}`;
}

test('recipeStreamFromChunkStream merges contiguous local ranges and asks for unknown chunks', async (t) => {
  const store = await openStore(t);
  const data = prngBytes('recipe', MiB);
  const x = await writeBlob(store, data);
  const chunks = await drain(store.blobChunkStream(x));
  const n = chunks.length;
  t.true(n >= 8);
  const offs: number[] = [];
  chunks.reduce((o, c) => (offs.push(o), o + c.size), 0);
  const sum = (cs: ChunkRef[]) => cs.reduce((s, c) => s + c.size, 0);
  const fake = (s: string, size: number): ChunkRef => ({ hash: sha256(Buffer.from(s)), size });

  const whole = (await drain(store.recipeStreamFromChunkStream(chunks))).map(stepView);
  t.deepEqual(whole, [`blob ${x} 0 ${data.length}`], 'a local blob is one step (from an iterable)');
  const fromAsync = (await drain(store.recipeStreamFromChunkStream(store.blobChunkStream(x)))).map(stepView);
  t.deepEqual(fromAsync, [`blob ${x} 0 ${data.length}`], 'a local blob is one step (from an async iterable)');

  const f1 = fake('unknown 1', 70_000);
  const f2 = fake('unknown 2', 20_000);
  const mixed = [...chunks.slice(0, 3), f1, f2, ...chunks.slice(5)];
  t.deepEqual((await drain(store.recipeStreamFromChunkStream(mixed))).map(stepView), [
    `blob ${x} 0 ${sum(chunks.slice(0, 3))}`,
    stepView({ kind: 'chunk', ...f1 }),
    stepView({ kind: 'chunk', ...f2 }),
    `blob ${x} ${offs[5]} ${sum(chunks.slice(5))}`,
  ]);

  const gap = [...chunks.slice(0, 2), ...chunks.slice(3)];
  t.deepEqual((await drain(store.recipeStreamFromChunkStream(gap))).map(stepView), [
    `blob ${x} 0 ${sum(chunks.slice(0, 2))}`,
    `blob ${x} ${offs[3]} ${sum(chunks.slice(3))}`,
  ]);

  const repeated = [chunks[1]!, chunks[1]!, chunks[2]!];
  t.deepEqual((await drain(store.recipeStreamFromChunkStream(repeated))).map(stepView), [
    `blob ${x} ${offs[1]} ${chunks[1]!.size}`,
    `blob ${x} ${offs[1]} ${chunks[1]!.size + chunks[2]!.size}`,
  ]);

  // A known hash with another size is not that chunk.
  const wrongSize = { hash: chunks[0]!.hash, size: chunks[0]!.size + 1 };
  t.deepEqual((await drain(store.recipeStreamFromChunkStream([wrongSize]))).map(stepView), [stepView({ kind: 'chunk', ...wrongSize })]);
  t.deepEqual(await drain(store.recipeStreamFromChunkStream([])), []);
});

test('recipeStreamFromChunkStream streams, and breaking out of it stops the input', async (t) => {
  const store = await openStore(t);
  let pulled = 0;
  let finished = false;
  function* endless(): Generator<ChunkRef> {
    try {
      for (let i = 0; ; i++) {
        pulled++;
        yield { hash: sha256(Buffer.from(`endless ${i}`)), size: 1000 + i };
      }
    } finally {
      finished = true;
    }
  }
  let steps = 0;
  for await (const s of store.recipeStreamFromChunkStream(endless())) {
    t.is(s.kind, 'chunk');
    if (++steps === 3) break;
  }
  t.is(steps, 3);
  t.true(pulled <= 5, `pulled ${pulled} chunks for 3 steps`);
  t.true(finished, 'the input iterator was closed');
});

// ---------------------------------------------------------------------------
// In-process transfer, as in Vanadium's localblobstore example

interface TransferResult {
  fetched: number;
  blobSteps: number;
  hash?: Uint8Array;
}

/**
 * Sends blob `name` from `a` to `b`: b's recipe from a's chunk list; chunks b
 * lacks come from a.lookupChunk + a reader; local ranges by appendBlob. With
 * `resume`, b continues its unfinalized blob of that name and skips the
 * chunks its durable bytes cover. With `stopAfter`, the transfer is cut
 * after that many steps and b's blob is left unfinalized.
 */
async function transfer(a: BlobStore, b: BlobStore, name: string, opts: { resume?: boolean; stopAfter?: number } = {}): Promise<TransferResult> {
  const w = opts.resume ? await b.resumeBlobWriter(name) : await b.newBlobWriter(name);
  const have = w.size;
  let firstStart = -1;
  async function* wanted(): AsyncGenerator<ChunkRef> {
    let off = 0;
    for await (const c of a.blobChunkStream(name)) {
      const end = off + c.size;
      if (end > have) {
        if (firstStart < 0) firstStart = off;
        yield c;
      }
      off = end;
    }
  }
  const readers = new Map<string, BlobReader>();
  const result: TransferResult = { fetched: 0, blobSteps: 0 };
  try {
    let first = true;
    let steps = 0;
    for await (const step of b.recipeStreamFromChunkStream(wanted())) {
      // The first chunk may begin before the durable end: skip what b has.
      const drop = first ? have - firstStart : 0;
      first = false;
      if (step.kind === 'chunk') {
        const loc = await a.lookupChunk(step.hash);
        let r = readers.get(loc.blob);
        if (!r) {
          r = await a.newBlobReader(loc.blob);
          readers.set(loc.blob, r);
        }
        const buf = Buffer.alloc(loc.size);
        if ((await r.readAt(buf, loc.offset)) !== loc.size || loc.size !== step.size || toHex(sha256(buf)) !== toHex(step.hash)) {
          throw new Error('the sender gave a wrong chunk');
        }
        result.fetched++;
        await w.appendBytes(buf.subarray(drop));
      } else {
        result.blobSteps++;
        await w.appendBlob(step.blob, step.offset + drop, step.size - drop);
      }
      if (opts.stopAfter !== undefined && ++steps === opts.stopAfter) {
        await w.closeWithoutFinalize();
        return result;
      }
    }
    await w.close();
    result.hash = w.hash;
    return result;
  } finally {
    for (const r of readers.values()) await r.close();
  }
}

test('transfer between two stores: simple, resumed, and with partial overlap', async (t) => {
  const dir = tempDir(t);
  const a = await openStore(t, path.join(dir, 'a'));
  const data = prngBytes('transfer', MiB);
  const name = await writeBlob(a, data);
  const aChunks = await drain(a.blobChunkStream(name));
  const aHash = toHex(merkleRoot(data));
  const ra = await a.newBlobReader(name);
  t.is(ra.hash && toHex(ra.hash), aHash);
  await ra.close();

  const check = async (b: BlobStore, what: string) => {
    t.true((await readAll(b, name)).equals(data), `${what}: content`);
    t.deepEqual(await chunkList(b, name), expectedChunks(data), `${what}: chunk list`);
  };

  // Simple: b is empty, so every chunk is fetched.
  const b1 = await openStore(t, path.join(dir, 'b1'));
  const simple = await transfer(a, b1, name);
  t.is(simple.hash && toHex(simple.hash), aHash, 'simple: hash');
  t.is(simple.fetched, aChunks.length, 'simple: every chunk fetched');
  t.is(simple.blobSteps, 0);
  await check(b1, 'simple');

  // Resumption after a cut transfer, in a store opened again (as after a crash).
  const b2root = path.join(dir, 'b2');
  const b2a = await BlobStore.open(b2root);
  const cut = await transfer(a, b2a, name, { stopAfter: 6 });
  t.is(cut.fetched, 6);
  t.is(cut.hash, undefined);
  await b2a.close();
  const b2 = await openStore(t, b2root);
  const resumed = await transfer(a, b2, name, { resume: true });
  t.is(resumed.hash && toHex(resumed.hash), aHash, 'resumed: hash');
  t.true(resumed.fetched < simple.fetched, `resumed fetched ${resumed.fetched}`);
  t.is(cut.fetched + resumed.fetched, simple.fetched, 'no chunk fetched twice');
  await check(b2, 'resumed');

  // Resumption from a durable prefix that ends inside a chunk.
  const b3 = await openStore(t, path.join(dir, 'b3'));
  const prefix = 600_000;
  const pw = await b3.newBlobWriter(name);
  await pw.appendBytes(data.subarray(0, prefix));
  await pw.closeWithoutFinalize();
  const mid = await transfer(a, b3, name, { resume: true });
  t.is(mid.hash && toHex(mid.hash), aHash, 'mid-chunk prefix: hash');
  let end = 0;
  const past = aChunks.filter((c) => (end += c.size) > prefix).length;
  t.is(mid.fetched, past, 'only the chunks past the prefix are fetched');
  t.true(mid.fetched < simple.fetched);
  await check(b3, 'mid-chunk prefix');

  // Partial overlap: b holds another blob with the first half of the content.
  const b4 = await openStore(t, path.join(dir, 'b4'));
  const other = await writeBlob(b4, Buffer.concat([data.subarray(0, 512 * KiB), prngBytes('other half', 512 * KiB)]));
  const overlap = await transfer(a, b4, name);
  t.is(overlap.hash && toHex(overlap.hash), aHash, 'overlap: hash');
  t.true(overlap.blobSteps >= 1, 'some ranges come from the local blob');
  t.true(overlap.fetched < simple.fetched, `overlap fetched ${overlap.fetched}`);
  t.true(overlap.fetched <= Math.ceil(aChunks.length / 2) + 2, `overlap fetched ${overlap.fetched} of ${aChunks.length}`);
  await check(b4, 'overlap');
  t.true((await readAll(b4, other)).subarray(0, 512 * KiB).equals(data.subarray(0, 512 * KiB)));
});

// ---------------------------------------------------------------------------
// Bad input

const BAD_NAMES: unknown[] = [
  '../../../../etc/passwd',
  '../../../../../../../../../../ab', // 32 characters
  'ABCDEF0123456789ABCDEF0123456789',
  'abcdef0123456789ABCDEF0123456789',
  'abcdef0123456789abcdef012345678',
  'abcdef0123456789abcdef01234567890',
  'g'.repeat(32),
  ' bcdef0123456789abcdef0123456789',
  'abcdef0123456789abcdef012345678\n',
  '',
  12345,
  null,
  {},
  ['abcdef0123456789abcdef0123456789'],
  Buffer.from('abcdef0123456789abcdef0123456789'),
];

async function fixture(t: ExecutionContext) {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const store = await openStore(t, root);
  const finalized = await writeBlob(store, Buffer.from('finalized'));
  const u = await store.newBlobWriter();
  await u.appendBytes(Buffer.from('unfinalized'));
  await u.closeWithoutFinalize();
  const w = await store.newBlobWriter();
  await w.appendBytes(Buffer.from('open'));
  await w.flush();
  const file = path.join(dir, 'input.bin');
  fs.writeFileSync(file, prngBytes('input file', 100));
  return { dir, root, store, finalized, unfinalized: u.name, w, file, missing: 'ab'.repeat(16) };
}

test('invalid blob names give ERR_INVALID_BLOB_NAME and touch nothing', async (t) => {
  const { root, store, w } = await fixture(t);
  const before = listing(root);
  for (const bad of BAD_NAMES) {
    const s = bad as string;
    const what = JSON.stringify(typeof bad === 'string' ? bad : String(bad));
    t.is(await codeOf(() => store.newBlobWriter(s)), 'ERR_INVALID_BLOB_NAME', `newBlobWriter(${what})`);
    t.is(await codeOf(() => store.resumeBlobWriter(s)), 'ERR_INVALID_BLOB_NAME', `resumeBlobWriter(${what})`);
    t.is(await codeOf(() => store.newBlobReader(s)), 'ERR_INVALID_BLOB_NAME', `newBlobReader(${what})`);
    t.is(await codeOf(() => store.deleteBlob(s)), 'ERR_INVALID_BLOB_NAME', `deleteBlob(${what})`);
    t.is(await codeOf(() => w.appendBlob(s)), 'ERR_INVALID_BLOB_NAME', `appendBlob(${what})`);
    t.is(await codeOf(() => drain(store.blobChunkStream(s))), 'ERR_INVALID_BLOB_NAME', `blobChunkStream(${what})`);
  }
  t.deepEqual(listing(root), before);
  t.is(w.size, 4);
  await w.appendBytes(Buffer.from('+more'));
  await w.close();
  t.is((await readAll(store, w.name)).toString(), 'open+more');
});

test('bad appendBytes and appendBlob arguments give their codes and append nothing', async (t) => {
  const { dir, root, store, w, file, finalized, missing } = await fixture(t);
  const before = listing(root);
  const cases: Array<[string, () => Promise<void>, string]> = [
    ['missing file', () => w.appendBytes({ file: path.join(dir, 'missing.bin') }), 'ERR_NO_SUCH_FILE'],
    ['a directory', () => w.appendBytes({ file: dir }), 'ERR_NO_SUCH_FILE'],
    ['bytes, then a missing file', () => w.appendBytes(Buffer.from('abc'), { file: path.join(dir, 'missing.bin') }), 'ERR_NO_SUCH_FILE'],
    ['file offset past the end', () => w.appendBytes({ file, offset: 101 }), 'ERR_ILLEGAL_POSITION'],
    ['file range past the end', () => w.appendBytes({ file, offset: 50, size: 51 }), 'ERR_ILLEGAL_POSITION'],
    ['file range at the end', () => w.appendBytes({ file, offset: 100, size: 1 }), 'ERR_ILLEGAL_POSITION'],
    ['good file range, then a bad one', () => w.appendBytes({ file, offset: 0, size: 10 }, { file, offset: 0, size: 101 }), 'ERR_ILLEGAL_POSITION'],
    ['negative file offset', () => w.appendBytes({ file, offset: -1 }), 'ERR_NEGATIVE_POSITION'],
    ['negative file size', () => w.appendBytes({ file, offset: 0, size: -2 }), 'ERR_NEGATIVE_POSITION'],
    ['fractional file offset', () => w.appendBytes({ file, offset: 1.5 }), 'ERR_NEGATIVE_POSITION'],
    ['not bytes', () => w.appendBytes(42 as never), 'ERR_BAD_ARGUMENT'],
    ['negative blob offset', () => w.appendBlob(finalized, -1), 'ERR_NEGATIVE_POSITION'],
    ['negative blob size', () => w.appendBlob(finalized, 0, -2), 'ERR_NEGATIVE_POSITION'],
    ['blob range past the end', () => w.appendBlob(finalized, 0, 10), 'ERR_ILLEGAL_POSITION'],
    ['blob offset past the end', () => w.appendBlob(finalized, 10), 'ERR_ILLEGAL_POSITION'],
    ['blob range at the end', () => w.appendBlob(finalized, 9, 1), 'ERR_ILLEGAL_POSITION'],
    ['missing blob', () => w.appendBlob(missing), 'ERR_NO_SUCH_BLOB'],
  ];
  for (const [what, fn, code] of cases) {
    t.is(await codeOf(fn), code, what);
    t.is(w.size, 4, `${what}: nothing appended`);
  }
  t.deepEqual(listing(root), before, 'nothing on disk changed');
  // The writer is still usable, and none of the failed calls left bytes behind.
  await w.appendBytes({ file, offset: 90 }, Buffer.from('!'));
  await w.appendBlob(finalized, 0, 3);
  await w.close();
  const want = Buffer.concat([Buffer.from('open'), prngBytes('input file', 100).subarray(90), Buffer.from('!fin')]);
  t.true((await readAll(store, w.name)).equals(want));
  t.is(toHex(w.hash), toHex(merkleRoot(want)));
});

test('existing, finalized, missing and locked blobs give their codes and touch nothing', async (t) => {
  const { root, store, finalized, unfinalized, w, missing } = await fixture(t);
  const before = listing(root);
  t.is(await codeOf(() => store.newBlobWriter(finalized)), 'ERR_BLOB_EXISTS');
  t.is(await codeOf(() => store.newBlobWriter(unfinalized)), 'ERR_BLOB_EXISTS');
  t.is(await codeOf(() => store.newBlobWriter(w.name)), 'ERR_BLOB_EXISTS');
  t.is(await codeOf(() => store.resumeBlobWriter(finalized)), 'ERR_BLOB_FINALIZED');
  t.is(await codeOf(() => store.resumeBlobWriter(missing)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(() => store.newBlobReader(missing)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(() => store.deleteBlob(missing)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(() => drain(store.blobChunkStream(missing))), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(() => store.resumeBlobWriter(w.name)), 'ERR_BLOB_LOCKED', 'a second writer in the same process');
  t.is(await codeOf(() => store.deleteBlob(w.name)), 'ERR_BLOB_LOCKED', 'deleting a blob being written');
  t.deepEqual(listing(root), before);
  // The first writer is unaffected.
  await w.appendBytes(Buffer.from('ing'));
  await w.close();
  t.is((await readAll(store, w.name)).toString(), 'opening');
  t.is((await readAll(store, unfinalized)).toString(), 'unfinalized');
});

// ---------------------------------------------------------------------------
// Locks across processes

const INDEX_URL = new URL('../src/index.js', import.meta.url).href;

const CHILD = `
const [indexUrl, root, name, mode] = process.argv.slice(2);
const { BlobStore } = await import(indexUrl);
const store = await BlobStore.open(root);
try {
  const w = await store.resumeBlobWriter(name);
  if (mode === 'hold') {
    process.stdout.write('HOLDING\\n');
    await new Promise((resolve) => process.stdin.once('data', resolve));
    process.stdin.destroy();
  }
  await w.appendBytes(Buffer.from('c'));
  await w.closeWithoutFinalize();
  process.stdout.write('OK ' + w.size + '\\n');
} catch (e) {
  process.stdout.write((e && e.code ? e.code : 'ERROR ' + String(e)) + '\\n');
} finally {
  await store.close();
}
`;

/** Runs the child script; `onHold` runs while the child holds the writer (mode 'hold'). */
function runChild(t: ExecutionContext, script: string, root: string, name: string, onHold?: () => Promise<void>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, INDEX_URL, root, name, onHold ? 'hold' : 'try'], { stdio: ['pipe', 'pipe', 'pipe'] });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let out = '';
    let err = '';
    let held = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (onHold && !held && out.includes('HOLDING\n')) {
        held = true;
        onHold().then(
          () => child.stdin.end('go\n'),
          (e) => {
            child.kill('SIGKILL');
            reject(e);
          },
        );
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) reject(new Error(`child exited ${code}: ${err}`));
      else resolve(out.replace('HOLDING\n', '').trim());
    });
  });
}

test('one writer per blob across processes', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const script = path.join(dir, 'child.mjs');
  fs.writeFileSync(script, CHILD);
  const store = await openStore(t, root);
  const u = await store.newBlobWriter();
  await u.appendBytes(Buffer.from('ab'));
  await u.closeWithoutFinalize();

  const w1 = await store.resumeBlobWriter(u.name);
  t.is(await codeOf(() => store.resumeBlobWriter(u.name)), 'ERR_BLOB_LOCKED', 'same process');
  t.is(await runChild(t, script, root, u.name), 'ERR_BLOB_LOCKED', 'another process');
  await w1.appendBytes(Buffer.from('p'));
  await w1.closeWithoutFinalize();
  t.is(await runChild(t, script, root, u.name), 'OK 4', 'after the first writer closed, another process writes');

  // The other way round: the child holds the writer while we try.
  const out = await runChild(t, script, root, u.name, async () => {
    t.is(await codeOf(() => store.resumeBlobWriter(u.name)), 'ERR_BLOB_LOCKED', 'held by another process');
    t.is(await codeOf(() => store.deleteBlob(u.name)), 'ERR_BLOB_LOCKED', 'delete while another process writes');
  });
  t.is(out, 'OK 5');
  const w2 = await store.resumeBlobWriter(u.name);
  t.is(w2.size, 5);
  await w2.close();
  t.is((await readAll(store, u.name)).toString(), 'abpcc');
});

test('a failed writer does not block the next one and leaves no temp file', async (t) => {
  const store = await openStore(t);
  const src = await writeBlob(store, prngBytes('doomed source', 200 * KiB));
  const srcFrags = (await casUsage(store)).ids;
  const w = await store.newBlobWriter();
  await w.appendBytes(prngBytes('before the failure', 100 * KiB));
  await w.flush();
  await w.appendBytes(prngBytes('not yet durable', 50 * KiB));
  for (const id of srcFrags) fs.rmSync(fragmentPath(store, id));
  t.is(await codeOf(() => w.appendBlob(src)), 'ERR_FRAGMENT_MISSING');
  const later = await codeOf(() => w.appendBytes(Buffer.from('x')));
  t.true(later === 'ERR_FRAGMENT_MISSING' || later === 'ERR_CLOSED', `a failed writer refuses more work (${later})`);
  t.deepEqual(fs.readdirSync(tmpDir(store)), [], 'the failed writer removed its temp fragment');

  const next = await store.resumeBlobWriter(w.name);
  t.is(next.size, 100 * KiB, 'the next writer continues from the last durable byte');
  await next.appendBytes(Buffer.from('after'));
  await next.close();
  const want = Buffer.concat([prngBytes('before the failure', 100 * KiB), Buffer.from('after')]);
  t.true((await readAll(store, w.name)).equals(want));
  t.is(toHex(next.hash), toHex(merkleRoot(want)));

  // A writer that failed on creation (the name exists) holds nothing either.
  t.is(await codeOf(() => store.newBlobWriter(w.name)), 'ERR_BLOB_EXISTS');
  t.is(await codeOf(() => store.resumeBlobWriter(w.name)), 'ERR_BLOB_FINALIZED');
});

test('calls after close reject with ERR_CLOSED (writer, reader, store)', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  const store = await BlobStore.open(root);
  t.teardown(() => store.close());
  const name = await writeBlob(store, Buffer.from('finalized'));
  const hash = sha256(Buffer.from('finalized'));

  const w = await store.newBlobWriter();
  await w.appendBytes(Buffer.from('abc'));
  await w.close();
  t.is(await codeOf(() => w.appendBytes(Buffer.from('x'))), 'ERR_CLOSED', 'appendBytes after close');
  t.is(await codeOf(() => w.appendBlob(name)), 'ERR_CLOSED', 'appendBlob after close');
  t.is(await codeOf(() => w.flush()), 'ERR_CLOSED', 'flush after close');
  t.is(await codeOf(() => w.close()), 'no error', 'close twice');
  t.is(await codeOf(() => w.closeWithoutFinalize()), 'no error', 'closeWithoutFinalize after close');

  const w2 = await store.newBlobWriter();
  await w2.appendBytes(Buffer.from('abc'));
  await w2.closeWithoutFinalize();
  t.is(await codeOf(() => w2.appendBytes(Buffer.from('x'))), 'ERR_CLOSED', 'appendBytes after closeWithoutFinalize');
  t.is(await codeOf(() => w2.flush()), 'ERR_CLOSED', 'flush after closeWithoutFinalize');
  t.is(await codeOf(() => w2.closeWithoutFinalize()), 'no error', 'closeWithoutFinalize twice');
  t.is(await codeOf(() => w2.close()), 'ERR_CLOSED', 'a writer closed unfinalized cannot finalize');
  t.false(w2.isFinalized);

  const r = await store.newBlobReader(name);
  await r.close();
  t.is(await codeOf(() => r.readAt(Buffer.alloc(1), 0)), 'ERR_CLOSED', 'readAt after close');
  t.is(await codeOf(() => r.read(Buffer.alloc(1))), 'ERR_CLOSED', 'read after close');
  t.is(await codeOf(async () => r.seek(0)), 'ERR_CLOSED', 'seek after close');
  t.is(
    await codeOf(async () => {
      for await (const _ of r.stream()) void _;
    }),
    'ERR_CLOSED',
    'stream after close',
  );
  t.is(await codeOf(() => r.close()), 'no error', 'reader close twice');

  // The store closes what is open: a writer (without finalizing) and a reader.
  const open = await store.newBlobWriter();
  await open.appendBytes(Buffer.from('xyz'));
  const openReader = await store.newBlobReader(name);
  await store.close();
  t.is(await codeOf(() => open.appendBytes(Buffer.from('x'))), 'ERR_CLOSED', 'writer of a closed store');
  t.is(await codeOf(() => openReader.readAt(Buffer.alloc(1), 0)), 'ERR_CLOSED', 'reader of a closed store');
  const storeCalls: Array<[string, () => unknown]> = [
    ['newBlobWriter', () => store.newBlobWriter()],
    ['newBlobWriter(name)', () => store.newBlobWriter('cd'.repeat(16))],
    ['resumeBlobWriter', () => store.resumeBlobWriter(open.name)],
    ['newBlobReader', () => store.newBlobReader(name)],
    ['deleteBlob', () => store.deleteBlob(name)],
    ['lookupChunk', () => store.lookupChunk(hash)],
    ['blobChunkStream', () => drain(store.blobChunkStream(name))],
    ['recipeStreamFromChunkStream', () => drain(store.recipeStreamFromChunkStream([{ hash, size: 9 }]))],
    ['listBlobIds', () => drain(store.listBlobIds())],
    ['listCaIds', () => drain(store.listCaIds())],
  ];
  for (const [what, fn] of storeCalls) t.is(await codeOf(fn), 'ERR_CLOSED', `store.${what} after close`);
  t.is(await codeOf(() => store.close()), 'no error', 'store close twice');
  t.true(fs.existsSync(descriptorPath(store, name)), 'deleteBlob after close did nothing');

  const again = await openStore(t, root);
  const resumed = await again.resumeBlobWriter(open.name);
  t.is(resumed.size, 3, 'closing the store made the open writer durable');
  await resumed.close();
  t.is((await readAll(again, open.name)).toString(), 'xyz');
});

// ---------------------------------------------------------------------------
// Torn descriptors and index rebuild

for (const damage of ['garbage appended', 'zeros appended', 'last record truncated'] as const) {
  test(`a damaged descriptor tail (${damage}) ends the blob at the last good record`, async (t) => {
    const root = path.join(tempDir(t), 'store');
    const p = [0, 1, 2, 3].map((i) => prngBytes(`torn ${damage} ${i}`, 300 * KiB));
    const store1 = await BlobStore.open(root);
    const w = await store1.newBlobWriter();
    for (const piece of p.slice(0, 3)) {
      await w.appendBytes(piece);
      await w.flush();
    }
    await w.closeWithoutFinalize();
    const desc = descriptorPath(store1, w.name);
    await store1.close();

    const size = fs.statSync(desc).size;
    if (damage === 'garbage appended') fs.appendFileSync(desc, prngBytes('garbage', 37));
    else if (damage === 'zeros appended') fs.appendFileSync(desc, Buffer.alloc(16));
    else fs.truncateSync(desc, size - 5);
    const durable = Buffer.concat(damage === 'last record truncated' ? p.slice(0, 2) : p.slice(0, 3));

    const store = await openStore(t, root);
    const r = await store.newBlobReader(w.name);
    t.is(r.size, durable.length);
    t.false(r.isFinalized);
    await r.close();
    t.true((await readAll(store, w.name)).equals(durable), 'every byte of the good records reads back');
    // The index forgets chunks of a record that is gone.
    let off = 0;
    const complete = new Chunker().push(durable).map((s) => {
      const ref: [string, number] = [toHex(sha256(durable.subarray(off, off + s))), s];
      off += s;
      return ref;
    });
    t.deepEqual(await chunkList(store, w.name), complete, 'chunk list of the good records');

    const w2 = await store.resumeBlobWriter(w.name);
    t.is(w2.size, durable.length);
    t.is(toHex(w2.hash), toHex(merkleRoot(durable)));
    if (damage === 'last record truncated') await w2.appendBytes(p[2]!);
    await w2.appendBytes(p[3]!);
    await w2.close();
    const full = Buffer.concat(p);
    t.is(toHex(w2.hash), toHex(merkleRoot(full)), 'close gives the hash of the full content');
    t.true((await readAll(store, w.name)).equals(full));
    t.deepEqual(await chunkList(store, w.name), expectedChunks(full));
    const r2 = await store.newBlobReader(w.name);
    t.true(r2.isFinalized);
    t.is(r2.hash && toHex(r2.hash), toHex(merkleRoot(full)));
    await r2.close();
  });
}

test('the index is rebuilt from blob/ and cas/ when index/ is deleted', async (t) => {
  const root = path.join(tempDir(t), 'store');
  const store1 = await BlobStore.open(root);
  const data = prngBytes('rebuild', MiB);
  const x = await writeBlob(store1, data);
  const z = await (async () => {
    const w = await store1.newBlobWriter();
    await w.appendBlob(x, 100 * KiB, 300 * KiB);
    await w.appendBytes(prngBytes('rebuild z', 200 * KiB));
    await w.close();
    return w.name;
  })();
  const y = await store1.newBlobWriter();
  await y.appendBytes(prngBytes('rebuild y', 500 * KiB));
  await y.closeWithoutFinalize();
  const d = await writeBlob(store1, data);
  await store1.deleteBlob(d);
  const blobs = [x, y.name, z];
  const lists = new Map<string, Array<[string, number]>>();
  for (const b of blobs) lists.set(b, await chunkList(store1, b));
  const ids = (await drain(store1.listBlobIds())).sort();
  const indexDirectory = indexDir(store1);
  await store1.close();

  fs.rmSync(indexDirectory, { recursive: true, force: true });
  const store = await openStore(t, root);
  t.deepEqual((await drain(store.listBlobIds())).sort(), ids);
  t.deepEqual(ids, [...blobs].sort());
  for (const b of blobs) {
    const list = await chunkList(store, b);
    t.true(list.length > 0, b);
    t.deepEqual(list, lists.get(b), `chunk list of ${b}`);
  }
  for (const b of blobs) {
    for (const [i, c] of (await drain(store.blobChunkStream(b))).entries()) await checkLocation(t, store, c, blobs, `${b} chunk ${i}`);
  }
  t.is(await codeOf(() => store.lookupChunk(sha256(Buffer.from('rebuild: no such chunk')))), 'ERR_NO_SUCH_CHUNK');
  const steps = (await drain(store.recipeStreamFromChunkStream(store.blobChunkStream(x)))).map(stepView);
  t.deepEqual(steps, [`blob ${x} 0 ${data.length}`]);
  // The unfinalized blob resumes after the rebuild.
  const w = await store.resumeBlobWriter(y.name);
  t.is(w.size, 500 * KiB);
  await w.appendBytes(Buffer.from('tail'));
  await w.close();
  const full = Buffer.concat([prngBytes('rebuild y', 500 * KiB), Buffer.from('tail')]);
  t.is(toHex(w.hash), toHex(merkleRoot(full)));
  t.deepEqual(await chunkList(store, y.name), expectedChunks(full));
});
