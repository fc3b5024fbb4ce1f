// A corrupt descriptor is not a torn one (review finding 1). A crash leaves
// at most its last record cut short (or zero-filled where the write did not
// reach); anything else after the last good record, or a bad header, is
// corruption: reads, resumes and GC refuse the blob with
// ERR_DESCRIPTOR_CORRUPT, fsck reports it and --repair leaves every byte of
// it, and no fragment it may reference is collected.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { BlobStore, toHex, merkleRoot, type FsckReport } from '../src/index.js';
import { tempDir, readAll, rejectionCode, collect } from './helpers/store.js';
import { descriptorPath, indexDir } from './helpers/paths.js';
import { cli } from './helpers/cli.js';
import { prngBytes } from '../tools/data.js';

const MiB = 1024 * 1024;

/** A finalized blob written in five flushed megabytes, and its descriptor's records as [start, end) byte ranges. */
async function fiveFlushes(t: ExecutionContext, store: BlobStore, finalize = true) {
  const content = prngBytes(`corrupt ${t.title}`, 5 * MiB);
  const w = await store.newBlobWriter();
  for (let i = 0; i < 5; i++) {
    await w.appendBytes(content.subarray(i * MiB, (i + 1) * MiB));
    await w.flush();
  }
  if (finalize) await w.close();
  else await w.closeWithoutFinalize();
  const file = descriptorPath(store, w.name);
  const bytes = fs.readFileSync(file);
  const records: Array<[number, number]> = [];
  for (let at = 0; at < bytes.length; ) {
    const end = at + 8 + bytes.readUInt32LE(at);
    records.push([at, end]);
    at = end;
  }
  return { name: w.name, content, file, bytes, records };
}

async function openStore(t: ExecutionContext, root: string): Promise<BlobStore> {
  const s = await BlobStore.open(root);
  t.teardown(() => s.close());
  return s;
}

const kinds = (r: FsckReport, blob: string) => r.problems.filter((p) => p.blob === blob).map((p) => `${p.kind}${p.repaired ? ' (repaired)' : ''}`);

/** Everything that could lose the blob refuses it, and nothing about it changes. */
async function assertRefused(t: ExecutionContext, store: BlobStore, name: string, file: string, what: string) {
  const before = fs.readFileSync(file);
  const frags = (await collect(store.listCaIds())).sort();
  t.is(await rejectionCode(store.newBlobReader(name)), 'ERR_DESCRIPTOR_CORRUPT', `${what}: reader`);
  t.is(await rejectionCode(store.stat(name)), 'ERR_DESCRIPTOR_CORRUPT', `${what}: stat`);
  t.is(await rejectionCode(store.resumeBlobWriter(name)), 'ERR_DESCRIPTOR_CORRUPT', `${what}: resume`);
  const other = await store.newBlobWriter();
  t.is(await rejectionCode(other.appendBlob(name)), 'ERR_DESCRIPTOR_CORRUPT', `${what}: appendBlob from it`);
  await other.closeWithoutFinalize();
  await store.deleteBlob(other.name);
  for (const repair of [false, true]) {
    const r = await store.fsck({ repair });
    t.deepEqual(kinds(r, name), ['corrupt-descriptor'], `${what}: fsck${repair ? ' --repair' : ''} reports it, unrepaired`);
    t.true(r.unrepaired >= 1);
  }
  t.is(await rejectionCode(store.gc()), 'ERR_DESCRIPTOR_CORRUPT', `${what}: gc refuses`);
  t.is(await rejectionCode(store.gc({ maxBytes: 0 })), 'ERR_DESCRIPTOR_CORRUPT', `${what}: gc with eviction refuses`);
  t.deepEqual((await collect(store.listCaIds())).sort(), frags, `${what}: no fragment deleted`);
  t.true(fs.readFileSync(file).equals(before), `${what}: the descriptor is left byte for byte`);
}

test('one flipped byte in the middle of a finalized descriptor: refused everywhere, nothing lost; mended, every byte reads back', async (t) => {
  const root = path.join(tempDir(t), 's');
  const store = await openStore(t, root);
  const { name, content, file, bytes } = await fiveFlushes(t, store);
  const mid = Math.floor(bytes.length / 2);
  const bad = Buffer.from(bytes);
  bad[mid] ^= 0xff;
  replaceFile(file, bad);
  await assertRefused(t, store, name, file, 'middle byte');
  replaceFile(file, bytes);
  t.true((await readAll(store, name)).equals(content), 'restored: all 5 MiB, since GC kept every fragment');
  t.true((await store.stat(name)).finalized);
});

test('four bytes of the header corrupted: refused, not taken for an empty blob; resume does not overwrite it', async (t) => {
  const root = path.join(tempDir(t), 's');
  const store = await openStore(t, root);
  const { name, content, file, bytes } = await fiveFlushes(t, store);
  const bad = Buffer.from(bytes);
  for (let i = 8; i < 12; i++) bad[i] ^= 0x5a;
  replaceFile(file, bad);
  await assertRefused(t, store, name, file, 'header');
  // The CLI: get fails (exit 1, the code named), resume with other content does not write, fsck --repair exits 1.
  const other = path.join(tempDir(t), 'other');
  fs.writeFileSync(other, prngBytes('other content', 100_000));
  for (const args of [['get', name, '-o', path.join(tempDir(t), 'out')], ['resume', name, other], ['fsck', '--repair']]) {
    const r = await cli(['--store', root, ...args]);
    t.is(r.code, 1, `cabstore ${args[0]}: exit 1 (${r.stderr})`);
    if (args[0] !== 'fsck') t.true(r.stderr.includes('ERR_DESCRIPTOR_CORRUPT'), r.stderr);
  }
  t.true(fs.readFileSync(file).equals(bad), 'nothing wrote to the descriptor');
  replaceFile(file, bytes);
  t.true((await readAll(store, name)).equals(content));
});

test('an empty descriptor file is corrupt, not a blob to start again', async (t) => {
  const store = await openStore(t, path.join(tempDir(t), 's'));
  const { name, file } = await fiveFlushes(t, store, false);
  replaceFile(file, '');
  t.is(await rejectionCode(store.resumeBlobWriter(name)), 'ERR_DESCRIPTOR_CORRUPT');
  t.deepEqual(kinds(await store.fsck({ repair: true }), name), ['corrupt-descriptor']);
  t.true(fs.existsSync(file), 'fsck --repair does not delete it');
});

test('what a crash can leave at the end is a torn tail; what it cannot is corruption', async (t) => {
  const root = path.join(tempDir(t), 's');
  const store = await openStore(t, root);
  const { name, content, file, bytes, records } = await fiveFlushes(t, store);
  const [lastStart] = records[records.length - 1]!;
  const [midStart, midEnd] = records[3]!;
  // A crash zero-fills whole sectors: the last one the file reaches, from its start (or the record's).
  const lastSector = Math.max(lastStart, bytes.length - (bytes.length % 512 || 512));
  const cases: Array<[string, Buffer, 'torn' | 'corrupt' | 'intact']> = [
    ['the last record cut short', bytes.subarray(0, bytes.length - 7), 'torn'],
    ['the last record cut inside its length field', bytes.subarray(0, lastStart + 3), 'torn'],
    ['zeros where the end of the last record should be (a file system that zero-fills what a crash did not write)', withZeros(bytes, lastSector, bytes.length), 'torn'],
    ['zeros over the whole last record', withZeros(bytes, lastStart, bytes.length), 'torn'],
    ['the last record complete, one payload byte flipped', flipped(bytes, bytes.length - 3), 'corrupt'],
    ['a middle record zero-filled, good records after it', withZeros(bytes, midStart, midEnd), 'corrupt'],
    ['a middle record whose length field says more than the file holds', withLength(bytes, midStart, 0x7fffffff), 'corrupt'],
    ['a middle record whose length field says less', withLength(bytes, midStart, 20), 'corrupt'],
    ['garbage after the final record, longer than the record it claims', Buffer.concat([bytes, frameOf(Buffer.from('not a record')), Buffer.from('and more')]), 'corrupt'],
    ['a whole frame that is no record, then zeros: no crash writes past a whole frame', Buffer.concat([bytes, frameOf(Buffer.from('not a record')), Buffer.alloc(1024)]), 'corrupt'],
    ['a whole frame that is no record, ending the file (written whole, never counted)', Buffer.concat([bytes, frameOf(Buffer.from('not a record'))]), 'intact'],
  ];
  for (const [what, desc, expect] of cases) {
    replaceFile(file, desc);
    const got = await store.stat(name).then(
      (st) => (st.finalized ? 'intact' : 'torn'),
      (e: { code?: string }) => (e.code === 'ERR_DESCRIPTOR_CORRUPT' ? 'corrupt' : String(e.code)),
    );
    t.is(got, expect, what);
  }
  // A torn tail is repaired as before: cut off, the blob unfinalized (its last flush stands), resumable to the same hash.
  replaceFile(file, bytes.subarray(0, bytes.length - 7));
  const r = await store.fsck({ repair: true });
  t.true(kinds(r, name).includes('torn-descriptor (repaired)'));
  t.is(r.unrepaired, 0);
  t.is(fs.statSync(file).size, lastStart);
  const w = await store.resumeBlobWriter(name);
  t.is(w.size, 5 * MiB);
  await w.close();
  t.is(toHex(w.hash), toHex(merkleRoot(content)));
});

test('a store whose index is rebuilt opens with a corrupt descriptor in it, and tells of it only when the blob is used', async (t) => {
  const root = path.join(tempDir(t), 's');
  let store = await BlobStore.open(root);
  const { name, file, bytes } = await fiveFlushes(t, store);
  const good = await fiveFlushes(t, store);
  await store.close();
  replaceFile(file, flipped(bytes, 10));
  fs.rmSync(indexDir(store), { recursive: true });
  store = await openStore(t, root);
  t.is(await rejectionCode(store.newBlobReader(name)), 'ERR_DESCRIPTOR_CORRUPT');
  t.true((await readAll(store, good.name)).equals(good.content));
});

/** Writes `file` anew (a new inode: the store's cache of parsed descriptors trusts an unchanged size and inode). */
function replaceFile(file: string, bytes: Uint8Array | string): void {
  fs.writeFileSync(`${file}.new`, bytes);
  fs.renameSync(`${file}.new`, file);
}

function withZeros(b: Buffer, from: number, to: number): Buffer {
  const out = Buffer.from(b);
  out.fill(0, from, to);
  return out;
}

function flipped(b: Buffer, at: number): Buffer {
  const out = Buffer.from(b);
  out[at] ^= 0x01;
  return out;
}

function withLength(b: Buffer, at: number, len: number): Buffer {
  const out = Buffer.from(b);
  out.writeUInt32LE(len, at);
  return out;
}

/** A frame with the right length and CRC around bytes that are no record. */
function frameOf(payload: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32LE(payload.length, 0);
  head.writeUInt32LE(zlib.crc32(payload), 4);
  return Buffer.concat([head, payload]);
}
