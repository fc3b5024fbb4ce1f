// Bundles and have-files that are well framed (right CRCs, an end record
// that counts right) but say impossible things: each is refused with
// ERR_BUNDLE_CORRUPT before anything is created or written.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { exportBundle, importBundle, isCabError, writeHave, type BlobStore } from '../src/index.js';
import { RecordWriter, scan } from '../src/transfer/records.js';
import { prngBytes } from '../tools/data.js';
import { collect, putBlob, readAll, tempDir, tempStore } from './helpers/store.js';

type Rec = Record<string, unknown>;
const BUNDLE = Buffer.from('CABBNDL1');
const HAVE = Buffer.from('CABHAVE1');

/** The records of a file, without its end record. */
async function records(file: string, magic: Buffer): Promise<Rec[]> {
  const out: Rec[] = [];
  await scan(file, magic, (r) => {
    if (r.t !== 'end') out.push(r);
  });
  return out;
}

/** Writes records, properly framed, with an end record that counts them. */
async function writeRecords(file: string, magic: Buffer, recs: Rec[]): Promise<string> {
  const w = await RecordWriter.create(file, magic);
  for (const r of recs) await w.put(r);
  await w.finish({});
  return file;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return isCabError(e) ? e.code : String(e);
  }
}

/** Everything a store holds on disk besides its index and config: blobs, fragments, temp files. */
function contents(store: BlobStore): string[] {
  return ['blob', 'cas', 'tmp'].flatMap((d) => fs.readdirSync(path.join(store.root, d), { recursive: true }).map((f) => `${d}/${String(f)}`)).sort();
}

async function exported(t: ExecutionContext): Promise<{ file: string; bytes: Buffer; recs: Rec[] }> {
  const src = await tempStore(t);
  const bytes = prngBytes('bundle checks', 700_000);
  const name = await putBlob(src, bytes);
  const file = path.join(tempDir(t), 'good.bundle');
  await exportBundle(src, [name], file);
  return { file, bytes, recs: await records(file, BUNDLE) };
}

test('a blob record with a negative, fractional, unsafe or wrong size, a bad name or a short hash: ERR_BUNDLE_CORRUPT, the store unchanged', async (t) => {
  const { file, bytes, recs } = await exported(t);
  const blob = recs.find((r) => r.t === 'blob')!;
  const size = blob.size as number;
  const dir = tempDir(t);
  const bad: Array<[string, Rec]> = [
    ['a negative size', { size: -5 }],
    ['a size one more than its chunks', { size: size + 1 }],
    ['a size one less than its chunks', { size: size - 1 }],
    ['a fractional size', { size: 1.5 }],
    ['an unsafe size', { size: 2 ** 53 }],
    ['a size that is a string', { size: String(size) }],
    ['a name with a path in it', { name: '../../../../tmp/x' }],
    ['an uppercase name', { name: (blob.name as string).toUpperCase() }],
    ['a 31-byte hash', { hash: (blob.hash as Uint8Array).subarray(1) }],
  ];
  const store = await tempStore(t);
  const before = contents(store);
  for (const [what, change] of bad) {
    const f = await writeRecords(path.join(dir, `${what}.bundle`), BUNDLE, recs.map((r) => (r === blob ? { ...r, ...change } : r)));
    t.is(await codeOf(importBundle(store, f)), 'ERR_BUNDLE_CORRUPT', what);
    t.deepEqual(await collect(store.listBlobIds()), [], `${what}: no blob`);
    t.deepEqual(contents(store), before, `${what}: nothing written`);
  }
  const r = await importBundle(store, file);
  t.is(r.imported.length, 1, 'the untouched bundle imports');
  t.true((await readAll(store, blob.name as string)).equals(bytes));
});

test('a have-file without its header, with a second one, with unsorted prefixes or an unknown record: ERR_BUNDLE_CORRUPT, no bundle written', async (t) => {
  const store = await tempStore(t);
  for (let i = 0; i < 3; i++) await putBlob(store, prngBytes(`have ${i}`, 300_000));
  const name = (await collect(store.listBlobIds()))[0]!;
  const dir = tempDir(t);
  const good = path.join(dir, 'good.have');
  await writeHave(store, good);
  const recs = await records(good, HAVE);
  const header = recs[0]!;
  t.is(header.t, 'have');
  const hashes = recs.find((r) => r.t === 'hashes')!;
  const p = Buffer.from(hashes.p as Uint8Array);
  t.true(p.length >= 16, 'at least two prefixes');
  const swapped = Buffer.concat([p.subarray(8, 16), p.subarray(0, 8), p.subarray(16)]);
  const bad: Array<[string, Rec[]]> = [
    ['no header', recs.slice(1)],
    ['hashes before the header', [hashes, header, ...recs.slice(1).filter((r) => r !== hashes)]],
    ['a second header', [header, header, ...recs.slice(1)]],
    ['a header of version 2', [{ ...header, v: 2 }, ...recs.slice(1)]],
    ['two prefixes swapped', recs.map((r) => (r === hashes ? { ...r, p: swapped } : r))],
    ['a record split out of order', [header, { t: 'hashes', p: p.subarray(8) }, { t: 'hashes', p: p.subarray(0, 8) }]],
    ['an unknown record', [...recs, { t: 'mystery' }]],
  ];
  for (const [what, rs] of bad) {
    const have = await writeRecords(path.join(dir, `${what}.have`), HAVE, rs);
    const out = path.join(dir, `${what}.bundle`);
    t.is(await codeOf(exportBundle(store, [name], out, { have })), 'ERR_BUNDLE_CORRUPT', what);
    t.false(fs.existsSync(out), `${what}: no bundle`);
  }
  t.deepEqual(
    fs.readdirSync(dir).filter((f) => f.includes('.tmp')),
    [],
    'no temp file left',
  );
  const r = await exportBundle(store, [name], path.join(dir, 'ok.bundle'), { have: good });
  t.is(r.chunks, 0, 'with its own have-file, the bundle needs no chunk data');
});
