import fs from 'node:fs/promises';
import zlib from 'node:zlib';
import { Packr } from 'msgpackr';
import { CabError, isCabError } from '../errors.js';
import { bytesEqual, toHex } from '../hash/sha256.js';
import { checkBlobName } from '../fsstore/layout.js';
import type { BlobStore } from '../fsstore/store.js';
import { MAX_LIST, MAX_GET_BYTES, type WireChunk } from './messages.js';
import { receive, type RemoteSource, type TransferStats } from './receive.js';

/**
 * Offline exchange. A bundle and a have-file are files of records, framed as
 * descriptor records are (u32 LE length, u32 LE CRC-32, MessagePack map):
 *
 *   "CABBNDL1"  {t:'bundle', v, chunker, hash}
 *               per blob: {t:'blob', name, size, hash}  {t:'listr', c, end}...  (its chunk list)
 *               {t:'chunks', items: [[hash, bytes], ...]}...  (data the receiver lacks, any order)
 *               {t:'end', records, blobs, chunks}
 *   "CABHAVE1"  {t:'have', v, chunker, n}  {t:'hashes', p: 8-byte prefixes, sorted}...  {t:'end', records}
 *
 * `listr` is the protocol's list answer, and the import runs the same
 * receiver as a pull, with the bundle as its source.
 */
const BUNDLE_MAGIC = Buffer.from('CABBNDL1');
const HAVE_MAGIC = Buffer.from('CABHAVE1');
const MAX_RECORD = 8 * 1024 * 1024;
const PREFIX = 8;

const packr = new Packr({ useRecords: false, moreTypes: false } as ConstructorParameters<typeof Packr>[0]);

function frame(rec: Record<string, unknown>): Buffer {
  const payload = packr.pack(rec);
  const out = Buffer.allocUnsafe(8 + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(zlib.crc32(payload), 4);
  payload.copy(out, 8);
  return out;
}

/** Appends records to a file, through a temp name renamed at the end. */
class RecordWriter {
  #fh: fs.FileHandle;
  #pos = 0;
  records = 0;
  constructor(
    fh: fs.FileHandle,
    readonly file: string,
    readonly tmp: string,
  ) {
    this.#fh = fh;
  }
  static async create(file: string, magic: Buffer): Promise<RecordWriter> {
    const tmp = `${file}.${process.pid}.tmp`;
    const w = new RecordWriter(await fs.open(tmp, 'w'), file, tmp);
    await w.#raw(magic);
    return w;
  }
  async #raw(b: Buffer): Promise<void> {
    let done = 0;
    while (done < b.length) done += (await this.#fh.write(b, done, b.length - done, this.#pos + done)).bytesWritten;
    this.#pos += b.length;
  }
  async put(rec: Record<string, unknown>): Promise<void> {
    this.records++;
    await this.#raw(frame(rec));
  }
  get size(): number {
    return this.#pos;
  }
  async finish(endRec: Record<string, unknown>): Promise<void> {
    await this.put({ ...endRec, t: 'end', records: this.records + 1 });
    await this.#fh.sync();
    await this.#fh.close();
    await fs.rename(this.tmp, this.file);
  }
  async abort(): Promise<void> {
    await this.#fh.close().catch(() => {});
    await fs.rm(this.tmp, { force: true });
  }
}

/** Reads and checks every record of a file; calls `on` with each and its offset. Rejects truncated or corrupt files. */
async function scan(file: string, magic: Buffer, on: (rec: Record<string, unknown>, at: number, len: number) => void | Promise<void>): Promise<number> {
  const fh = await fs.open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new CabError('ERR_NO_SUCH_FILE', `cannot read ${file}: ${e.message}`, { path: file }, { cause: e });
  });
  const corrupt = (why: string, at: number) => new CabError('ERR_BUNDLE_CORRUPT', `${file}: ${why} at byte ${at}`, { path: file, offset: at });
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(8);
    if ((await fh.read(head, 0, 8, 0)).bytesRead < 8 || !head.equals(magic)) throw corrupt(`not a ${magic.toString()} file`, 0);
    let pos = 8;
    let records = 0;
    let ended = false;
    while (pos < size) {
      if (ended) throw corrupt('bytes after the end record', pos);
      if (pos + 8 > size) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record header`, { path: file, offset: pos });
      await fh.read(head, 0, 8, pos);
      const len = head.readUInt32LE(0);
      if (len > MAX_RECORD) throw corrupt(`a record of ${len} bytes`, pos);
      if (pos + 8 + len > size) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record`, { path: file, offset: pos });
      const payload = Buffer.allocUnsafe(len);
      await fh.read(payload, 0, len, pos + 8);
      if (zlib.crc32(payload) !== head.readUInt32LE(4)) throw corrupt('a record fails its CRC', pos);
      let rec: unknown;
      try {
        rec = packr.unpack(payload);
      } catch {
        throw corrupt('a record does not decode', pos);
      }
      if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) throw corrupt('a record is not a map', pos);
      records++;
      const r = rec as Record<string, unknown>;
      if (r.t === 'end') {
        if (r.records !== records) throw corrupt(`the end record counts ${String(r.records)} records, the file has ${records}`, pos);
        ended = true;
      }
      await on(r, pos + 8, len);
      pos += 8 + len;
    }
    if (!ended) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} has no end record`, { path: file, offset: pos });
    return records;
  } finally {
    await fh.close();
  }
}

/** A compact summary of the chunks a store holds: sorted 8-byte hash prefixes. */
export async function writeHave(store: BlobStore, file: string): Promise<{ chunks: number; bytes: number }> {
  const w = await RecordWriter.create(file, HAVE_MAGIC);
  try {
    const { min, avg, max } = store.chunker;
    await w.put({ t: 'have', v: 1, chunker: { min, avg, max } });
    let n = 0;
    let last: Uint8Array | undefined;
    for (;;) {
      const page = store.index.chunkHashPage(last, 65536);
      if (page.length === 0) break;
      last = page[page.length - 1];
      // Prefixes of distinct hashes may repeat; a repeat costs 8 bytes and no harm.
      await w.put({ t: 'hashes', p: Buffer.concat(page.map((h) => h.subarray(0, PREFIX))) });
      n += page.length;
    }
    await w.finish({ chunks: n });
    return { chunks: n, bytes: w.size };
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** What a have-file says a store holds. */
class HaveSet {
  constructor(readonly prefixes: Buffer) {}
  has(hash: Uint8Array): boolean {
    const key = Buffer.from(hash.buffer, hash.byteOffset, PREFIX);
    let lo = 0;
    let hi = this.prefixes.length / PREFIX - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = this.prefixes.compare(key, 0, PREFIX, mid * PREFIX, mid * PREFIX + PREFIX);
      if (c === 0) return true;
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }
}

async function readHave(file: string): Promise<HaveSet> {
  const parts: Buffer[] = [];
  await scan(file, HAVE_MAGIC, (r) => {
    if (r.t === 'hashes') {
      if (!(r.p instanceof Uint8Array) || r.p.length % PREFIX) throw new CabError('ERR_BUNDLE_CORRUPT', `${file}: a hashes record is malformed`, { path: file });
      parts.push(Buffer.from(r.p));
    }
  });
  return new HaveSet(Buffer.concat(parts));
}

export interface ExportReport {
  blobs: number;
  chunks: number;
  /** Chunk data bytes in the bundle. */
  dataBytes: number;
  /** The bundle's size. */
  bytes: number;
}

/**
 * Writes a bundle of the named finalized blobs: each blob's name, size, hash
 * and chunk list, and the data of the chunks the have-file does not list (all
 * of them without one).
 */
export async function exportBundle(
  store: BlobStore,
  names: string[],
  file: string,
  options: { have?: string; onProgress?: (bytes: number) => void } = {},
): Promise<ExportReport> {
  for (const n of names) checkBlobName(n);
  const have = options.have ? await readHave(options.have) : undefined;
  const w = await RecordWriter.create(file, BUNDLE_MAGIC);
  const report: ExportReport = { blobs: 0, chunks: 0, dataBytes: 0, bytes: 0 };
  try {
    const { min, avg, max } = store.chunker;
    await w.put({ t: 'bundle', v: 1, chunker: { min, avg, max }, hash: 'sha256' });
    const sent = new Set<string>();
    for (const name of names) {
      const r = await store.newBlobReader(name);
      try {
        if (!r.isFinalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized`, { blob: name });
        await w.put({ t: 'blob', name, size: r.size, hash: r.hash });
        let page: WireChunk[] = [];
        for await (const c of store.blobChunkStream(name)) {
          page.push([c.hash, c.size]);
          if (page.length === MAX_LIST) {
            await w.put({ t: 'listr', c: page, end: false });
            page = [];
          }
        }
        await w.put({ t: 'listr', c: page, end: true });
        report.blobs++;
        // The data, in blob order, of chunks the receiver lacks.
        let items: Array<[Uint8Array, Uint8Array]> = [];
        let bytes = 0;
        let offset = 0;
        for await (const c of store.blobChunkStream(name)) {
          const key = toHex(c.hash);
          const at = offset;
          offset += c.size;
          if (sent.has(key) || have?.has(c.hash)) continue;
          sent.add(key);
          const buf = Buffer.allocUnsafe(c.size);
          let got = 0;
          while (got < c.size) got += await r.readAt(buf.subarray(got), at + got);
          items.push([c.hash, buf]);
          bytes += c.size;
          report.chunks++;
          report.dataBytes += c.size;
          if (bytes >= MAX_GET_BYTES) {
            await w.put({ t: 'chunks', items });
            options.onProgress?.(report.dataBytes);
            items = [];
            bytes = 0;
          }
        }
        if (items.length) await w.put({ t: 'chunks', items });
      } finally {
        await r.close();
      }
    }
    await w.finish({ blobs: report.blobs, chunks: report.chunks });
    report.bytes = w.size;
    return report;
  } catch (e) {
    await w.abort();
    throw e;
  }
}

export interface ImportReport {
  /** Blobs now finalized here (imported, or already held). */
  imported: TransferStats[];
  /** Blobs left out because neither the bundle nor the store has some of their chunks. */
  incomplete: Array<{ name: string; missing: Array<{ hash: string; offset: number; size: number }>; missingCount: number }>;
}

/**
 * Imports a bundle: the whole file is checked first (a truncated or corrupt
 * bundle changes nothing: ERR_BUNDLE_TRUNCATED, ERR_BUNDLE_CORRUPT); then
 * each blob is rebuilt from local data plus the bundle's chunks, every chunk
 * and the blob hash verified, exactly as a pull. A blob needing a chunk that
 * neither has is left out and reported with what is missing. An interrupted
 * import, run again, finishes the job.
 */
export async function importBundle(store: BlobStore, file: string, options: { onProgress?: (bytes: number) => void } = {}): Promise<ImportReport> {
  // Pass 1: check everything, and note where each chunk's data and each blob's list are.
  const blobs: Array<{ name: string; size: number; hash: Uint8Array; lists: Array<[number, number]> }> = [];
  const data = new Map<string, [number, number, number]>(); // hash hex -> [record offset, record length, item index]
  let header = false;
  await scan(file, BUNDLE_MAGIC, (r, at, len) => {
    const bad = (why: string) => new CabError('ERR_BUNDLE_CORRUPT', `${file}: ${why}`, { path: file, offset: at });
    switch (r.t) {
      case 'bundle':
        if (header || r.v !== 1) throw bad('a bad or second bundle header');
        header = true;
        break;
      case 'blob':
        if (!header || typeof r.name !== 'string' || !Number.isSafeInteger(r.size) || !(r.hash instanceof Uint8Array) || r.hash.length !== 32) throw bad('a malformed blob record');
        checkBlobName(r.name);
        blobs.push({ name: r.name, size: r.size as number, hash: Uint8Array.from(r.hash), lists: [] });
        break;
      case 'listr':
        if (!blobs.length || !Array.isArray(r.c)) throw bad('a chunk list outside a blob');
        for (const c of r.c as unknown[]) {
          if (!Array.isArray(c) || !(c[0] instanceof Uint8Array) || c[0].length !== 32 || !Number.isSafeInteger(c[1]) || c[1] <= 0) throw bad('a malformed chunk reference');
        }
        blobs[blobs.length - 1]!.lists.push([at, len]);
        break;
      case 'chunks':
        if (!Array.isArray(r.items)) throw bad('a malformed chunks record');
        (r.items as unknown[]).forEach((it, i) => {
          if (!Array.isArray(it) || !(it[0] instanceof Uint8Array) || it[0].length !== 32 || !(it[1] instanceof Uint8Array)) throw bad('a malformed chunk');
          data.set(toHex(it[0]), [at, len, i]);
        });
        break;
      case 'end':
        break;
      default:
        throw bad(`an unknown record ${JSON.stringify(String(r.t).slice(0, 20))}`);
    }
  });
  if (!header) throw new CabError('ERR_BUNDLE_CORRUPT', `${file} has no bundle header`, { path: file });

  const fh = await fs.open(file, 'r');
  const readRecord = async (at: number, len: number) => {
    const b = Buffer.allocUnsafe(len);
    await fh.read(b, 0, len, at);
    return packr.unpack(b) as Record<string, unknown>;
  };
  const report: ImportReport = { imported: [], incomplete: [] };
  let cache: { at: number; rec: Record<string, unknown> } | undefined;
  try {
    for (const b of blobs) {
      const list = async function* () {
        let offset = 0;
        for (const [at, len] of b.lists) {
          for (const [hash, size] of (await readRecord(at, len)).c as WireChunk[]) {
            yield { hash, size, offset };
            offset += size;
          }
        }
      };
      // Is every chunk here or in the bundle? Say exactly what is not.
      const missing: ImportReport['incomplete'][number]['missing'] = [];
      let missingCount = 0;
      for await (const c of list()) {
        if (data.has(toHex(c.hash))) continue;
        if (store.index.locations(c.hash).next().done === false) continue;
        missingCount++;
        if (missing.length < 100) missing.push({ hash: toHex(c.hash), offset: c.offset, size: c.size });
      }
      if (missingCount) {
        report.incomplete.push({ name: b.name, missing, missingCount });
        continue;
      }
      const src: RemoteSource = {
        label: `bundle ${file}`,
        stat: async () => ({ size: b.size, finalized: true, hash: b.hash }),
        list: async (_name, from) => {
          // Pages of the bundle's list records, addressed by chunk number.
          let n = 0;
          for (let i = 0; i < b.lists.length; i++) {
            const c = (await readRecord(b.lists[i]![0], b.lists[i]![1])).c as WireChunk[];
            if (from < n + c.length || (from === n + c.length && i === b.lists.length - 1)) {
              return { chunks: c.slice(from - n), end: i === b.lists.length - 1 };
            }
            n += c.length;
          }
          return { chunks: [], end: true };
        },
        get: async (items) => {
          const out: Uint8Array[] = [];
          for (const [hash, off, len] of items) {
            const where = data.get(toHex(hash));
            if (!where) throw new CabError('ERR_NO_SUCH_CHUNK', `the bundle has no chunk ${toHex(hash)}`);
            if (cache?.at !== where[0]) cache = { at: where[0], rec: await readRecord(where[0], where[1]) };
            const item = (cache.rec.items as Array<[Uint8Array, Uint8Array]>)[where[2]]!;
            if (!bytesEqual(item[0], hash)) throw new CabError('ERR_BUNDLE_CORRUPT', `${file} changed while it was read`, { path: file });
            out.push(item[1].subarray(off, off + len));
          }
          options.onProgress?.(out.reduce((a, x) => a + x.length, 0));
          return out;
        },
      };
      try {
        report.imported.push(await receive(store, src, b.name, { label: `bundle:${file}` }));
      } catch (e) {
        if (isCabError(e, 'ERR_NO_SUCH_CHUNK')) {
          report.incomplete.push({ name: b.name, missing: [], missingCount: 1 });
          continue;
        }
        throw e;
      }
    }
  } finally {
    await fh.close();
  }
  return report;
}
