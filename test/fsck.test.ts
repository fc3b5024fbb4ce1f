import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import zlib from 'node:zlib';
import { BlobStore, CabError, merkleRoot, sha256, toHex, type FsckReport } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { tempDir, readAll, collect } from './helpers/store.js';
import { descriptorPath, fragmentPath, indexDir } from './helpers/paths.js';

/** A store of four blobs, two of which share data, with small fragments. */
async function fixture(t: ExecutionContext) {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir, { fragmentSize: 1 << 20 });
  const contents = new Map<string, Buffer>();
  for (let i = 0; i < 4; i++) {
    const bytes = prngBytes(`fsck ${i}`, 2_500_000 + i * 1000);
    const w = await store.newBlobWriter();
    for (let off = 0; off < bytes.length; off += 700_000) {
      await w.appendBytes(bytes.subarray(off, off + 700_000));
      await w.flush();
    }
    await w.close();
    contents.set(w.name, bytes);
  }
  return { dir, store, contents };
}

function kinds(r: FsckReport): string[] {
  return r.problems.map((p) => p.kind).sort();
}

/** After repair: every blob not called damaged reads back with its recorded hash; damaged ones read up to the damage. */
async function checkAfterRepair(t: ExecutionContext, store: BlobStore, contents: Map<string, Buffer>, report: FsckReport): Promise<void> {
  const damaged = new Map(report.damaged.map((d) => [d.blob, d.offset]));
  for (const [name, bytes] of contents) {
    const r = await store.newBlobReader(name);
    try {
      if (!damaged.has(name)) {
        t.deepEqual(await readAll(store, name), bytes, name);
        t.is(toHex(r.hash!), toHex(merkleRoot(bytes)));
      } else {
        // readable up to the chunk the damage starts in
        const at = r.damagedAt!;
        t.true(at <= damaged.get(name)!);
        const buf = Buffer.alloc(at);
        if (at > 0) t.is(await r.readAt(buf, 0), at);
        t.deepEqual(buf, bytes.subarray(0, at));
        const e = await t.throwsAsync(r.readAt(Buffer.alloc(10), at), { instanceOf: CabError });
        t.is(e!.code, 'ERR_BLOB_DAMAGED');
      }
    } finally {
      await r.close();
    }
  }
}

test('fsck on a clean store reports nothing, with and without verify', async (t) => {
  const { store } = await fixture(t);
  t.teardown(() => store.close());
  for (const verify of [false, true]) {
    const r = await store.fsck({ verify });
    t.deepEqual(r.problems, [], JSON.stringify(r.problems));
    t.is(r.blobs, 4);
    t.is(r.unrepaired, 0);
    if (verify) t.true(r.bytesVerified >= 4 * 2_500_000, "every blob's content is hashed");
  }
});

test('a deleted fragment: found, and repair marks the blob damaged', async (t) => {
  const { store, contents } = await fixture(t);
  t.teardown(() => store.close());
  const [name] = [...contents.keys()];
  const r0 = await store.newBlobReader(name!);
  await r0.close();
  const frags = await collect(store.listCaIds());
  // the fragment holding the blob's second MiB
  const victim = frags.find((f) => fs.statSync(fragmentPath(store, f)).size > 0 && !!f)!;
  fs.rmSync(fragmentPath(store, victim));
  const found = await store.fsck();
  t.true(kinds(found).includes('missing-fragment'));
  t.true(found.unrepaired > 0);
  t.is(found.damaged.length, 1);
  const repaired = await store.fsck({ repair: true });
  // the loss is recorded (repaired); the damaged blob stays a problem until a pull heals it
  t.deepEqual(repaired.problems.filter((p) => !p.repaired).map((p) => p.kind), ['damaged']);
  t.is(repaired.unrepaired, 1);
  await checkAfterRepair(t, store, contents, repaired);
  // lookupChunk no longer offers the lost chunks of the damaged blob, and still offers the others
  const bad = repaired.damaged[0]!;
  let offered = 0;
  for await (const c of store.blobChunkStream(bad.blob)) {
    const loc = await store.lookupChunk(c.hash).catch(() => undefined);
    if (loc) t.false(loc.blob === bad.blob && loc.offset < bad.end && loc.offset + loc.size > bad.offset);
    if (loc?.blob === bad.blob) offered++;
  }
  t.true(offered > 0);
  const again = await store.fsck();
  t.deepEqual(again.problems.map((p) => p.kind), ['damaged']);
  t.is(again.damaged.length, 1);
});

test('a fragment with a flipped byte: found with verify only; repair marks its blob damaged', async (t) => {
  const { store, contents } = await fixture(t);
  t.teardown(() => store.close());
  const frags = await collect(store.listCaIds());
  const victim = fragmentPath(store, frags[3]!);
  const b = fs.readFileSync(victim);
  b[Math.floor(b.length / 2)]! ^= 0x40;
  fs.writeFileSync(victim, b);
  t.deepEqual((await store.fsck()).problems, []);
  const found = await store.fsck({ verify: true });
  t.true(kinds(found).includes('corrupt-fragment'));
  t.true(found.problems.some((p) => p.kind === 'corrupt-fragment' && p.blob !== undefined));
  const repaired = await store.fsck({ verify: true, repair: true });
  t.is(repaired.damaged.length, 1);
  await checkAfterRepair(t, store, contents, repaired);
});

test('a truncated descriptor and a garbage record: found, and repair truncates to the last good record', async (t) => {
  const { store, contents } = await fixture(t);
  t.teardown(() => store.close());
  const [a, b] = [...contents.keys()];
  // a: cut in the middle of its last (final) record
  const fa = descriptorPath(store, a!);
  fs.truncateSync(fa, fs.statSync(fa).size - 5);
  // b: a well-framed record (right length and CRC) whose payload is garbage
  const payload = Buffer.from('definitely not msgpack of a record \x00\xff');
  const head = Buffer.alloc(8);
  head.writeUInt32LE(payload.length, 0);
  head.writeUInt32LE(zlib.crc32(payload), 4);
  fs.appendFileSync(descriptorPath(store, b!), Buffer.concat([head, payload]));
  const found = await store.fsck();
  t.deepEqual(
    found.problems.filter((p) => p.kind === 'torn-descriptor').map((p) => p.blob).sort(),
    [a, b].sort(),
  );
  const repaired = await store.fsck({ repair: true });
  t.is(repaired.unrepaired, 0);
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
  // b is intact; a lost its final record: it is unfinalized, holds its flushed bytes, and can be finished
  t.deepEqual(await readAll(store, b!), contents.get(b!));
  const r = await store.newBlobReader(a!);
  t.false(r.isFinalized);
  const size = r.size;
  await r.close();
  t.deepEqual(await readAll(store, a!), contents.get(a!)!.subarray(0, size));
  const w = await store.resumeBlobWriter(a!);
  await w.appendBytes(contents.get(a!)!.subarray(size));
  await w.close();
  t.is(toHex(w.hash), toHex(merkleRoot(contents.get(a!)!)));
});

test('a removed chunk index: fsck finds it, repair rebuilds it', async (t) => {
  const { dir, store, contents } = await fixture(t);
  const before = new Map<string, string[]>();
  for (const name of contents.keys()) before.set(name, (await collect(store.blobChunkStream(name))).map((c) => `${toHex(c.hash)}:${c.size}`));
  await store.close();
  fs.rmSync(indexDir(store), { recursive: true });
  const s = await BlobStore.open(dir, { catchUpIndex: false });
  t.teardown(() => s.close());
  const found = await s.fsck();
  t.is(found.problems.filter((p) => p.kind === 'index-mismatch').length, 4);
  await s.fsck({ repair: true });
  t.deepEqual((await s.fsck({ verify: true })).problems, []);
  for (const [name, chunks] of before) {
    t.deepEqual((await collect(s.blobChunkStream(name))).map((c) => `${toHex(c.hash)}:${c.size}`), chunks);
    const first = (await collect(s.blobChunkStream(name)))[0]!;
    t.is((await s.lookupChunk(first.hash)).size, first.size);
  }
});

test('fsck leaves a blob that a live writer holds alone', async (t) => {
  const { store } = await fixture(t);
  t.teardown(() => store.close());
  const w = await store.newBlobWriter();
  const bytes = prngBytes('live', 100_010);
  await w.appendBytes(bytes.subarray(0, 100_000));
  await w.flush();
  // what a record half-written at this moment looks like
  const file = descriptorPath(store, w.name);
  fs.appendFileSync(file, Buffer.from([200, 0, 0, 0, 1, 2]));
  const size = fs.statSync(file).size;
  const r = await store.fsck({ repair: true });
  t.false(r.problems.some((p) => p.blob === w.name));
  t.is(fs.statSync(file).size, size); // not truncated under the writer
  await w.appendBytes(bytes.subarray(100_000));
  await w.close();
  t.deepEqual(await readAll(store, w.name), bytes);
  t.is(toHex(w.hash), toHex(merkleRoot(bytes)));
});

test('fragments are not named by their bytes: verify still finds a flipped byte in an unfinalized blob, in a whole chunk and in its open chunk', async (t) => {
  const dir = tempDir(t);
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  const bytes = prngBytes('fsck open chunk', 1_000_000);
  const w = await store.newBlobWriter();
  await w.appendBytes(bytes);
  await w.closeWithoutFinalize();
  const frags = await collect(store.listCaIds());
  t.is(frags.length, 1);
  t.notRegex(frags[0]!, new RegExp(toHex(sha256(fs.readFileSync(fragmentPath(store, frags[0]!))))), 'not the SHA-256 of its bytes');
  const st = await store.stat(w.name);
  const chunks = await collect(store.blobChunkStream(w.name));
  const chunkEnd = chunks.reduce((n, c) => n + c.size, 0);
  t.true(chunkEnd < st.size, 'the blob has an open chunk');
  t.deepEqual((await store.fsck({ verify: true })).problems, []);

  // One byte flipped in the open chunk: only the hash of it in the last record can tell.
  const victim = fragmentPath(store, frags[0]!);
  const flip = (at: number) => {
    const b = fs.readFileSync(victim);
    b[at]! ^= 0x01;
    fs.writeFileSync(victim, b);
  };
  flip(st.size - 10);
  t.deepEqual((await store.fsck()).problems, [], 'plain fsck reads no content');
  let found = await store.fsck({ verify: true });
  t.deepEqual(found.problems.map((p) => [p.kind, p.offset, p.end]), [['corrupt-fragment', chunkEnd, st.size]]);
  t.deepEqual(found.corruptFragments, frags);
  // A writer will not resume from bytes that no longer match.
  const e = await t.throwsAsync(store.resumeBlobWriter(w.name), { instanceOf: CabError });
  t.is(e!.code, 'ERR_HASH_MISMATCH');

  // And one in the second whole chunk.
  flip(chunks[0]!.size + 5);
  found = await store.fsck({ verify: true, repair: true });
  t.deepEqual(found.damaged.map((d) => [d.offset, d.end]), [[chunks[0]!.size, chunks[0]!.size + chunks[1]!.size], [chunkEnd, st.size]]);
  t.is((await store.fsck()).damaged.length, 2, 'recorded');
});
