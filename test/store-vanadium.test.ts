// The classic scenario of Vanadium's fs_cablobstore tests (localblobstore_testlib):
// "wom", "bat" and "wombat" written directly, with resumes in between, and
// from ranges of other blobs; then "batwom", "atwo" and "atwoatwoombatatwo"
// built only from ranges of those. Every blob is read back through every
// combination of seek/read/readAt/stream positions.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { BlobStore, BlobReader, CabError, merkleRoot, chunk, sha256, toHex } from '../src/index.js';

async function openStore(t: ExecutionContext): Promise<{ dir: string; store: BlobStore }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cabstore-vanadium-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = await BlobStore.open(path.join(dir, 'store'));
  t.teardown(() => store.close());
  return { dir, store };
}

/** The code of what `fn` threw or rejected with; async APIs must reject, not throw synchronously. */
async function codeOf(fn: () => unknown, async = true): Promise<string> {
  let p: unknown;
  try {
    p = fn();
  } catch (e) {
    return (async ? 'threw synchronously: ' : '') + describe(e);
  }
  try {
    await p;
  } catch (e) {
    return describe(e);
  }
  return 'no error';
}

function syncCodeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return describe(e);
  }
  return undefined;
}

function describe(e: unknown): string {
  return e instanceof CabError ? e.code : `not a CabError: ${String(e)}`;
}

const text = (s: string) => Buffer.from(s, 'latin1');

/** One step of building a blob. `blob` names a blob built earlier, by its key. */
type Op = { bytes: string } | { blob: string; offset?: number; size?: number } | { file: string; ranges: Array<[number, number]> };

interface Spec {
  key: string;
  expected: string;
  ops: Op[];
  /** closeWithoutFinalize + resumeBlobWriter between ops. */
  resume?: boolean;
}

/** The blobs, in build order. Several keys have the same content, made different ways. */
const SPECS: Spec[] = [
  { key: 'wom', expected: 'wom', ops: [{ bytes: 'wom' }] },
  { key: 'bat', expected: 'bat', ops: [{ bytes: 'bat' }] },
  { key: 'wombat', expected: 'wombat', ops: [{ bytes: 'wom' }, { bytes: 'bat' }] },
  { key: 'wombat1', expected: 'wombat', ops: [{ bytes: 'wombat' }] },
  { key: 'wom-resumed', expected: 'wom', ops: [{ bytes: 'w' }, { bytes: 'o' }, { bytes: 'm' }], resume: true },
  { key: 'wombat-resumed', expected: 'wombat', ops: [{ bytes: 'wo' }, { bytes: '' }, { bytes: 'mb' }, { bytes: 'at' }], resume: true },
  // appendBlob with defaulted, explicit and -1 sizes
  { key: 'wombat-blobs', expected: 'wombat', ops: [{ blob: 'wom' }, { blob: 'bat', offset: 0, size: -1 }] },
  { key: 'wombat-ranges', expected: 'wombat', ops: [{ blob: 'wom', offset: 0, size: 3 }, { blob: 'bat', offset: 0, size: 3 }], resume: true },
  { key: 'wombat-file', expected: 'wombat', ops: [{ file: 'xxwombatyy', ranges: [[2, 3], [5, 3]] }] },
  { key: 'batwom', expected: 'batwom', ops: [{ blob: 'wombat', offset: 3, size: 3 }, { blob: 'wombat-resumed', offset: 0, size: 3 }] },
  { key: 'atwo', expected: 'atwo', ops: [{ blob: 'batwom', offset: 1, size: 4 }] },
  {
    key: 'atwoatwoombatatwo',
    expected: 'atwoatwoombatatwo',
    ops: [
      { blob: 'atwo', offset: 0, size: 4 },
      { blob: 'atwo', offset: 0 },
      { blob: 'wombat-blobs', offset: 1, size: 5 },
      { blob: 'batwom', offset: 1, size: 4 },
    ],
  },
  {
    key: 'atwoatwoombatatwo-resumed',
    expected: 'atwoatwoombatatwo',
    ops: [
      { blob: 'atwoatwoombatatwo', offset: 0, size: 2 },
      { blob: 'batwom', offset: 3, size: 0 },
      { blob: 'atwoatwoombatatwo', offset: 2, size: 11 },
      { bytes: 'at' },
      { blob: 'atwo', offset: 2, size: 2 },
    ],
    resume: true,
  },
  { key: 'empty', expected: '', ops: [] },
  { key: 'empty-from-ranges', expected: '', ops: [{ blob: 'wom', offset: 3, size: 0 }, { blob: 'wom', offset: 1, size: 0 }, { bytes: '' }], resume: true },
];

interface Built {
  store: BlobStore;
  dir: string;
  names: Map<string, string>;
}

async function buildAll(t: ExecutionContext): Promise<Built> {
  const { dir, store } = await openStore(t);
  const names = new Map<string, string>();
  for (const spec of SPECS) {
    let w = await store.newBlobWriter();
    const name = w.name;
    for (const [i, op] of spec.ops.entries()) {
      if (spec.resume && i > 0) {
        await w.closeWithoutFinalize();
        w = await store.resumeBlobWriter(name);
      }
      if ('bytes' in op) {
        await w.appendBytes(text(op.bytes));
      } else if ('blob' in op) {
        const src = names.get(op.blob)!;
        if (op.offset === undefined) await w.appendBlob(src);
        else if (op.size === undefined) await w.appendBlob(src, op.offset);
        else await w.appendBlob(src, op.offset, op.size);
      } else {
        const file = path.join(dir, `${spec.key}.src`);
        fs.writeFileSync(file, text(op.file));
        await w.appendBytes(...op.ranges.map(([offset, size]) => ({ file, offset, size })));
      }
    }
    t.is(w.size, spec.expected.length, `${spec.key}: writer size before close`);
    await w.close();
    t.true(w.isFinalized, `${spec.key}: finalized`);
    t.is(toHex(w.hash), toHex(merkleRoot(text(spec.expected))), `${spec.key}: writer hash`);
    names.set(spec.key, name);
  }
  return { store, dir, names };
}

async function withReader<T>(store: BlobStore, name: string, fn: (r: BlobReader) => Promise<T>): Promise<T> {
  const r = await store.newBlobReader(name);
  try {
    return await fn(r);
  } finally {
    await r.close();
  }
}

test('every blob has the expected content, size, hash and chunk list', async (t) => {
  const { store, names } = await buildAll(t);
  const listed = new Set<string>();
  for await (const n of store.listBlobIds()) listed.add(n);
  t.deepEqual([...listed].sort(), [...names.values()].sort());
  for (const spec of SPECS) {
    const name = names.get(spec.key)!;
    const want = text(spec.expected);
    await withReader(store, name, async (r) => {
      t.is(r.name, name);
      t.is(r.size, want.length, spec.key);
      t.true(r.isFinalized, spec.key);
      t.is(r.hash && toHex(r.hash), toHex(merkleRoot(want)), `${spec.key}: reader hash`);
      const buf = Buffer.alloc(want.length + 5, 0xee);
      const n = await r.readAt(buf, 0);
      t.is(n, want.length, spec.key);
      t.is(buf.subarray(0, n).toString('latin1'), spec.expected, spec.key);
    });
    const chunks: Array<[string, number]> = [];
    for await (const c of store.blobChunkStream(name)) chunks.push([toHex(c.hash), c.size]);
    let off = 0;
    const wantChunks = chunk(want).map((s) => {
      const ref: [string, number] = [toHex(sha256(want.subarray(off, off + s))), s];
      off += s;
      return ref;
    });
    t.deepEqual(chunks, wantChunks, `${spec.key}: chunk list`);
  }
});

/**
 * Runs `check` on a reader of every spec's blob: it pushes what is wrong and
 * returns how many cases it tried, which must be `cases(length)`.
 */
async function everySpec(
  t: ExecutionContext,
  cases: (len: number) => number,
  check: (r: BlobReader, want: Buffer, key: string, wrong: string[]) => Promise<number>,
): Promise<void> {
  const { store, names } = await buildAll(t);
  for (const spec of SPECS) {
    const want = text(spec.expected);
    const wrong: string[] = [];
    const checks = await withReader(store, names.get(spec.key)!, (r) => check(r, want, spec.key, wrong));
    t.is(checks, cases(want.length), spec.key);
    t.deepEqual(wrong, [], spec.key);
  }
}

test('seek (every offset and whence) then read (every size) returns the expected bytes or error', async (t) => {
  await everySpec(
    t,
    (len) => (len + 2) * (len + 3) * 4,
    async (r, want, key, wrong) => {
      const len = want.length;
      let checks = 0;
      for (let size = 0; size <= len + 1; size++) {
        for (let offset = -1; offset <= len + 1; offset++) {
          for (const whence of [0, 1, 2, 3]) {
            const at = `${key} size ${size} offset ${offset} whence ${whence}`;
            // A start position that varies with the case, so whence 1 is not whence 0.
            const p = (size * 5 + (offset + 1) * 3 + whence) % (len + 1);
            if (r.seek(p, 0) !== p) wrong.push(`${at}: seek(${p}, 0)`);
            const base = whence === 0 ? 0 : whence === 1 ? p : len;
            const target = base + offset;
            const wantErr =
              whence === 3 ? 'ERR_BAD_WHENCE' : target < 0 ? 'ERR_NEGATIVE_POSITION' : target > len ? 'ERR_ILLEGAL_POSITION' : undefined;
            let got: number | undefined;
            const gotErr = syncCodeOf(() => {
              got = r.seek(offset, whence as 0 | 1 | 2);
            });
            if (gotErr !== wantErr) wrong.push(`${at}: seek error ${gotErr} expected ${wantErr}`);
            if (wantErr === undefined && got !== target) wrong.push(`${at}: seek returned ${got} expected ${target}`);
            // A failed seek leaves the position where it was.
            const pos = wantErr === undefined ? target : p;
            const buf = Buffer.alloc(size, 0xee);
            const n = await r.read(buf);
            const expect = want.subarray(pos, pos + size);
            if (n !== expect.length) wrong.push(`${at}: read ${n} bytes expected ${expect.length}`);
            if (!buf.subarray(0, expect.length).equals(expect)) wrong.push(`${at}: read ${buf.toString('latin1')} expected ${expect.toString('latin1')}`);
            if (buf.subarray(expect.length).some((b) => b !== 0xee)) wrong.push(`${at}: read wrote past the bytes it returned`);
            const after = r.seek(0, 1);
            if (after !== pos + expect.length) wrong.push(`${at}: position after read ${after} expected ${pos + expect.length}`);
            checks++;
          }
        }
      }
      return checks;
    },
  );
});

test('non-integer seek offsets and read past the end at every position', async (t) => {
  const { store, names } = await buildAll(t);
  await withReader(store, names.get('atwoatwoombatatwo')!, async (r) => {
    for (const bad of [0.5, NaN, Infinity, -Infinity]) t.is(syncCodeOf(() => r.seek(bad, 0)), 'ERR_NEGATIVE_POSITION', `offset ${bad}`);
    t.is(r.seek(0, 1), 0, 'failed seeks leave the position alone');
    t.is(r.seek(17, 0), 17);
    const buf = Buffer.alloc(4);
    t.is(await r.read(buf), 0, 'read at the end returns 0');
    t.is(await r.read(buf), 0, 'and again');
    t.is(r.seek(-17, 2), 0);
    t.is(await r.read(buf), 4);
    t.is(buf.toString('latin1'), 'atwo');
  });
});

test('readAt at every position with every buffer size', async (t) => {
  await everySpec(
    t,
    (len) => (len + 2) * (len + 3),
    async (r, want, key, wrong) => {
      const len = want.length;
      let checks = 0;
      r.seek(Math.floor(len / 2), 0);
      for (let size = 0; size <= len + 1; size++) {
        for (let position = -1; position <= len + 1; position++) {
          const at = `${key} size ${size} position ${position}`;
          const buf = Buffer.alloc(size, 0xee);
          let n: number | undefined;
          const err = await codeOf(async () => {
            n = await r.readAt(buf, position);
          });
          const wantErr = position < 0 ? 'ERR_NEGATIVE_POSITION' : position > len ? 'ERR_ILLEGAL_POSITION' : 'no error';
          if (err !== wantErr) wrong.push(`${at}: ${err} expected ${wantErr}`);
          if (wantErr === 'no error') {
            const expect = want.subarray(position, position + size);
            if (n !== expect.length) wrong.push(`${at}: ${n} bytes expected ${expect.length}`);
            if (!buf.subarray(0, expect.length).equals(expect)) wrong.push(`${at}: bytes differ`);
            if (position === len && n !== 0) wrong.push(`${at}: readAt at the end returned ${n}`);
          }
          if (buf.subarray(wantErr === 'no error' ? Math.min(size, len - position) : 0).some((b) => b !== 0xee)) {
            wrong.push(`${at}: wrote bytes it did not return`);
          }
          checks++;
        }
      }
      if (r.seek(0, 1) !== Math.floor(len / 2)) wrong.push(`${key}: readAt moved the seek position`);
      return checks;
    },
  );
});

/** Everything a stream yields, or the code it failed with (thrown at once or emitted). */
async function streamResult(r: BlobReader, opts?: { start?: number; end?: number }): Promise<Buffer | string> {
  let s: Readable;
  try {
    s = r.stream(opts);
  } catch (e) {
    return describe(e);
  }
  const parts: Buffer[] = [];
  try {
    for await (const b of s) parts.push(b as Buffer);
  } catch (e) {
    return describe(e);
  }
  return Buffer.concat(parts);
}

test('stream yields exactly [start, end) for every start <= end, cuts an end past the blob, and rejects bad ranges', async (t) => {
  const { store, names } = await buildAll(t);
  for (const spec of SPECS) {
    const want = text(spec.expected);
    const len = want.length;
    const wrong: string[] = [];
    await withReader(store, names.get(spec.key)!, async (r) => {
      for (let start = 0; start <= len; start++) {
        for (let end = start; end <= len; end++) {
          const got = await streamResult(r, { start, end });
          const expect = want.subarray(start, end);
          if (!(got instanceof Buffer) || !got.equals(expect)) wrong.push(`[${start}, ${end}): ${String(got)} expected ${expect.toString('latin1')}`);
        }
      }
      const whole = await streamResult(r);
      if (!(whole instanceof Buffer) || !whole.equals(want)) wrong.push(`stream(): ${String(whole)}`);
      const startOnly = await streamResult(r, { start: Math.min(1, len) });
      if (!(startOnly instanceof Buffer) || !startOnly.equals(want.subarray(1))) wrong.push(`stream({start: 1}): ${String(startOnly)}`);
      // As fs.createReadStream: an end past the blob is cut at its end, a start past it reads nothing.
      for (const [opts, expect] of [
        [{ start: 0, end: len + 1 }, want],
        [{ start: Math.min(1, len), end: len + 1000 }, want.subarray(1)],
        [{ start: len + 1 }, Buffer.alloc(0)],
        [{ start: len + 5, end: len + 9 }, Buffer.alloc(0)],
      ] as const) {
        const got = await streamResult(r, opts);
        if (!(got instanceof Buffer) || !got.equals(expect)) wrong.push(`stream(${JSON.stringify(opts)}): ${String(got)} expected ${expect.toString('latin1')}`);
      }
      const errs: Array<[{ start?: number; end?: number }, string]> = [
        [{ start: len + 2, end: len + 1 }, 'ERR_ILLEGAL_POSITION'],
        [{ start: -1, end: len }, 'ERR_NEGATIVE_POSITION'],
        [{ start: 0, end: -1 }, 'ERR_NEGATIVE_POSITION'],
      ];
      if (len > 0) errs.push([{ start: len, end: len - 1 }, 'ERR_ILLEGAL_POSITION']);
      for (const [opts, code] of errs) {
        const got = await streamResult(r, opts);
        if (got !== code) wrong.push(`stream(${JSON.stringify(opts)}): ${String(got)} expected ${code}`);
      }
    });
    t.deepEqual(wrong, [], spec.key);
  }
});

test('a reader keeps reading after deleteBlob; the name is gone for everything else', async (t) => {
  const { store, names } = await buildAll(t);
  const name = names.get('atwoatwoombatatwo')!;
  const r = await store.newBlobReader(name);
  const early = Buffer.alloc(4);
  t.is(await r.readAt(early, 0), 4, 'a read before the delete opens a fragment');
  await store.deleteBlob(name);
  const buf = Buffer.alloc(20);
  t.is(await r.readAt(buf, 0), 17);
  t.is(buf.subarray(0, 17).toString('latin1'), 'atwoatwoombatatwo');
  const streamed = await streamResult(r, { start: 4, end: 13 });
  t.true(streamed instanceof Buffer && streamed.toString('latin1') === 'atwoombat', String(streamed));
  t.is(r.size, 17);
  t.is(await codeOf(() => store.newBlobReader(name)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(() => store.deleteBlob(name)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(() => store.resumeBlobWriter(name)), 'ERR_NO_SUCH_BLOB');
  t.is(await codeOf(async () => {
    for await (const _ of store.blobChunkStream(name)) void _;
  }), 'ERR_NO_SUCH_BLOB');
  const listed: string[] = [];
  for await (const n of store.listBlobIds()) listed.push(n);
  t.false(listed.includes(name));
  t.is(listed.length, names.size - 1);
  await r.close();
  // The other blobs built from the same fragments are untouched.
  await withReader(store, names.get('atwoatwoombatatwo-resumed')!, async (r2) => {
    const b = Buffer.alloc(17);
    t.is(await r2.readAt(b, 0), 17);
    t.is(b.toString('latin1'), 'atwoatwoombatatwo');
  });
  // The name can be used again for a new blob.
  const w = await store.newBlobWriter(name);
  await w.appendBytes(text('new'));
  await w.close();
  await withReader(store, name, async (r3) => {
    const b = Buffer.alloc(8);
    t.is(await r3.readAt(b, 0), 3);
    t.is(b.subarray(0, 3).toString('latin1'), 'new');
  });
});

test('a reader on an unfinalized blob sees the bytes committed when it opened, not later appends', async (t) => {
  const { store } = await openStore(t);
  const w = await store.newBlobWriter();
  const r0 = await store.newBlobReader(w.name);
  t.is(r0.size, 0);
  t.false(r0.isFinalized);
  t.is(r0.hash, undefined);

  await w.appendBytes(text('wom'));
  await w.flush();
  const r1 = await store.newBlobReader(w.name);
  t.is(r1.size, 3);
  t.false(r1.isFinalized);
  t.is(r1.hash, undefined);

  // Appended but not flushed: not committed.
  await w.appendBytes(text('bat'));
  const r2 = await store.newBlobReader(w.name);
  t.is(r2.size, 3, 'unflushed bytes are not visible');

  await w.flush();
  const r3 = await store.newBlobReader(w.name);
  t.is(r3.size, 6);

  await w.appendBytes(text('atwo'));
  await w.close();
  const r4 = await store.newBlobReader(w.name);
  t.true(r4.isFinalized);
  t.is(r4.size, 10);
  t.is(r4.hash && toHex(r4.hash), toHex(merkleRoot(text('wombatatwo'))));

  const readAll = async (r: BlobReader) => {
    const buf = Buffer.alloc(16);
    const n = await r.readAt(buf, 0);
    return buf.subarray(0, n).toString('latin1');
  };
  t.is(await readAll(r0), '');
  t.is(await readAll(r1), 'wom');
  t.is(await readAll(r2), 'wom');
  t.is(await readAll(r3), 'wombat');
  t.is(await readAll(r4), 'wombatatwo');
  // Size, finalization and the end of the blob stay as they were at open.
  t.is(r1.size, 3);
  t.false(r1.isFinalized);
  t.is(await codeOf(() => r1.readAt(Buffer.alloc(1), 4)), 'ERR_ILLEGAL_POSITION');
  t.is(syncCodeOf(() => r1.seek(4, 0)), 'ERR_ILLEGAL_POSITION');
  t.is(r1.seek(0, 2), 3);
  t.is(await r1.read(Buffer.alloc(4)), 0);
  const s = await streamResult(r1);
  t.true(s instanceof Buffer && s.toString('latin1') === 'wom', String(s));
  for (const r of [r0, r1, r2, r3, r4]) await r.close();
});

test('a reader on a resumed blob sees the prefix, and the resumed writer continues it', async (t) => {
  const { store } = await openStore(t);
  const w = await store.newBlobWriter();
  await w.appendBytes(text('wom'));
  await w.closeWithoutFinalize();
  const r1 = await store.newBlobReader(w.name);
  t.is(r1.size, 3);
  t.false(r1.isFinalized);
  const w2 = await store.resumeBlobWriter(w.name);
  t.is(w2.size, 3);
  t.is(toHex(w2.hash), toHex(merkleRoot(text('wom'))));
  await w2.appendBytes(text('bat'));
  await w2.close();
  const buf = Buffer.alloc(8);
  t.is(await r1.readAt(buf, 0), 3);
  t.is(buf.subarray(0, 3).toString('latin1'), 'wom');
  await withReader(store, w.name, async (r2) => {
    t.is(r2.size, 6);
    t.is(await r2.readAt(buf, 0), 6);
    t.is(buf.subarray(0, 6).toString('latin1'), 'wombat');
  });
  await r1.close();
});
