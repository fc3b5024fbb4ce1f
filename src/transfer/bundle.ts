import fs from 'node:fs/promises';
import { CabError, ioError, isCabError, throwIfAborted } from '../errors.js';
import { HASH_NAME, bytesEqual, toHex } from '../hash/sha256.js';
import { STORE_MAX_CHUNK, resolveStoreChunkerParams } from '../chunker/params.js';
import { checkBlobName, isBlobName } from '../format/layout.js';
import type { BlobStore } from '../store.js';
import { MAX_LIST, MAX_GET_BYTES, type WireChunk } from './messages.js';
import { receive, type RemoteSource, type TransferStats } from './receive.js';
import { withHexJSON } from './stats.js';
import { RecordWriter, packr, scan } from './records.js';
import { readHave } from './have.js';
import { liveLocation } from '../index/recipes.js';

export { writeHave } from './have.js';

/**
 * Offline exchange. A bundle is a file of records (see records.ts):
 *
 *   "CABBNDL1"  {t:'bundle', v, chunker, hash}
 *               per blob: {t:'blob', name, size, hash}  {t:'listr', c, end}...  (its chunk list)
 *               {t:'chunks', items: [[hash, bytes], ...]}...  (data the receiver lacks, any order)
 *               {t:'end', records, blobs, chunks}
 *
 * `listr` is the protocol's list answer, and the import runs the same
 * receiver as a pull, with the bundle as its source.
 */
const BUNDLE_MAGIC = Buffer.from('CABBNDL1');

export interface ExportReport {
  blobs: number;
  /** Each blob in the bundle, in order, with its size and hash (hex in JSON). */
  contents: Array<{ name: string; size: number; hash: Uint8Array }>;
  chunks: number;
  /** Chunk data bytes in the bundle. */
  dataBytes: number;
  /** The bundle's size. */
  bytes: number;
}

export interface ExportOptions {
  /** The receiver's have-file: chunks it lists are left out. */
  have?: string;
  /** Called after each chunks record is written with the running total of chunk data bytes written so far; the last call gives the total. */
  onProgress?: (bytes: number) => void;
  /** Cancels the export: it rejects with ERR_ABORTED, and no bundle (not even part of one) is left at the target path (a device or FIFO has had what was written). */
  signal?: AbortSignal;
}

export interface ImportOptions {
  /** Called as chunk data is taken from the bundle, with the running total of those bytes over the whole import. */
  onProgress?: (bytes: number) => void;
  /**
   * Cancels the import: it rejects with ERR_ABORTED. Blobs finalized before
   * stay; the blob being rebuilt keeps what was verified and written,
   * unfinalized (an import run again resumes it); nothing is finalized half.
   */
  signal?: AbortSignal;
}

/**
 * Writes a bundle of the named finalized blobs: each blob's name, size, hash
 * and chunk list, and the data of the chunks the have-file does not list (all
 * of them without one). A regular `file` appears whole or not at all (a temp
 * file renamed); a symlink's target is replaced, not the link; a device or
 * FIFO is written directly. A directory is ERR_IO before any work.
 */
export async function exportBundle(
  store: BlobStore,
  names: string[],
  file: string,
  options: ExportOptions = {},
): Promise<ExportReport> {
  for (const n of names) checkBlobName(n);
  // A store made before chunks were bound to 4 MiB may hold larger ones, which no bundle record carries.
  resolveStoreChunkerParams(store.chunker);
  const { signal } = options;
  const aborted = () => throwIfAborted(signal, `exporting ${file}`);
  aborted();
  const have = options.have ? await readHave(options.have, signal) : undefined;
  // Written under a temp name, renamed into place by finish(); abort() removes it.
  const w = await RecordWriter.create(file, BUNDLE_MAGIC);
  const report: ExportReport = { blobs: 0, contents: [], chunks: 0, dataBytes: 0, bytes: 0 };
  try {
    const { min, avg, max } = store.chunker;
    await w.put({ t: 'bundle', v: 1, chunker: { min, avg, max }, hash: HASH_NAME });
    const sent = new Set<string>();
    for (const name of names) {
      aborted();
      const r = await store.newBlobReader(name);
      try {
        if (!r.isFinalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized`, { blob: name });
        await w.put({ t: 'blob', name, size: r.size, hash: r.hash });
        let page: WireChunk[] = [];
        for await (const c of store.blobChunkStream(name)) {
          page.push([c.hash, c.size]);
          if (page.length === MAX_LIST) {
            aborted();
            await w.put({ t: 'listr', c: page, end: false });
            page = [];
          }
        }
        await w.put({ t: 'listr', c: page, end: true });
        report.blobs++;
        report.contents.push(withHexJSON({ name, size: r.size, hash: r.hash! }));
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
          // A record holds at most MAX_GET_BYTES of chunk data (or one chunk, no larger: STORE_MAX_CHUNK).
          if (items.length > 0 && bytes + c.size > MAX_GET_BYTES) {
            aborted();
            await w.put({ t: 'chunks', items });
            options.onProgress?.(report.dataBytes);
            items = [];
            bytes = 0;
          }
          const buf = Buffer.allocUnsafe(c.size);
          await r.readFully(buf, at);
          items.push([c.hash, buf]);
          bytes += c.size;
          report.chunks++;
          report.dataBytes += c.size;
        }
        if (items.length) {
          await w.put({ t: 'chunks', items });
          options.onProgress?.(report.dataBytes);
        }
      } finally {
        await r.close();
      }
    }
    aborted();
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
  incomplete: Array<{ name: string; missing: MissingChunk[]; missingCount: number }>;
}

/** A chunk a blob needs that neither the bundle nor the store has. */
export interface MissingChunk {
  /** Its SHA-256 (hex in JSON). */
  hash: Uint8Array;
  offset: number;
  size: number;
}

/** A bundle read through and checked (checkBundle): where the chunk lists of each blob and the data of each chunk are. */
interface CheckedBundle {
  blobs: Array<{ name: string; size: number; hash: Uint8Array; lists: Array<[number, number]>; listed: number; at: number }>;
  /** Chunk hash (hex) -> [record offset, record length, item index]. */
  data: Map<string, [number, number, number]>;
}

/**
 * The first pass of an import, which needs no store: reads the whole bundle
 * and checks it (framing, CRCs, the end record, the header, every record;
 * see importBundle), noting where the chunk lists of each blob and the data
 * of each chunk are. ERR_BUNDLE_TRUNCATED or ERR_BUNDLE_CORRUPT otherwise.
 * The command line runs it before it makes a store for an import.
 */
export async function checkBundle(file: string, signal?: AbortSignal): Promise<CheckedBundle> {
  const aborted = () => throwIfAborted(signal, `importing ${file}`);
  aborted();
  const blobs: CheckedBundle['blobs'] = [];
  const data = new Map<string, [number, number, number]>(); // hash hex -> [record offset, record length, item index]
  const named = new Map<string, { size: number; hash: Uint8Array }>();
  let header = false;
  await scan(file, BUNDLE_MAGIC, (r, at, len) => {
    aborted();
    const bad = (why: string) => new CabError('ERR_BUNDLE_CORRUPT', `${file}: ${why}`, { path: file, offset: at });
    switch (r.t) {
      case 'bundle':
        if (header || r.v !== 1) throw bad('a bad or second bundle header');
        checkHeader(r, bad);
        header = true;
        break;
      case 'blob':
        if (!header) throw bad('a blob record before the bundle header');
        if (!isBlobName(r.name)) throw bad(`a blob record with a bad name ${JSON.stringify(String(r.name).slice(0, 80))}`);
        if (typeof r.size !== 'number' || !Number.isSafeInteger(r.size) || r.size < 0) throw bad(`blob ${r.name} has a bad size ${String(r.size)}`);
        if (!(r.hash instanceof Uint8Array) || r.hash.length !== 32) throw bad(`blob ${r.name} has a bad hash`);
        {
          // One name, two contents: which is the blob? Refused whole, before anything is written (the same blob twice is harmless).
          const twin = named.get(r.name);
          if (twin && (twin.size !== r.size || !bytesEqual(twin.hash, r.hash as Uint8Array))) throw bad(`blob ${r.name} is named twice, with different contents`);
          named.set(r.name, { size: r.size, hash: r.hash as Uint8Array });
        }
        blobs.push({ name: r.name, size: r.size, hash: Uint8Array.from(r.hash), lists: [], listed: 0, at });
        break;
      case 'listr': {
        const b = blobs[blobs.length - 1];
        if (!b || !Array.isArray(r.c)) throw bad('a chunk list outside a blob');
        for (const c of r.c as unknown[]) {
          if (!Array.isArray(c) || !(c[0] instanceof Uint8Array) || c[0].length !== 32 || !Number.isSafeInteger(c[1]) || c[1] <= 0 || c[1] > STORE_MAX_CHUNK) throw bad('a malformed chunk reference');
          b.listed += c[1] as number;
        }
        b.lists.push([at, len]);
        break;
      }
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
  for (const b of blobs) {
    if (b.listed !== b.size) {
      throw new CabError('ERR_BUNDLE_CORRUPT', `${file}: blob ${b.name} says ${b.size} bytes, its chunks make ${b.listed}`, { path: file, offset: b.at, blob: b.name });
    }
  }
  return { blobs, data };
}

/**
 * Imports a bundle: the whole file is checked first (a truncated or corrupt
 * bundle changes nothing: ERR_BUNDLE_TRUNCATED, ERR_BUNDLE_CORRUPT; each
 * blob record must have a valid name, a size that is a non-negative integer
 * and the sum of its chunk list, and a 32-byte hash); then
 * each blob is rebuilt from local data plus the bundle's chunks, every chunk
 * and the blob hash verified, exactly as a pull. A blob needing a chunk that
 * neither has is left out and reported with what is missing. An interrupted
 * import, run again, finishes the job.
 */
export async function importBundle(store: BlobStore, file: string, options: ImportOptions = {}): Promise<ImportReport> {
  const { signal } = options;
  const aborted = () => throwIfAborted(signal, `importing ${file}`);
  const { blobs, data } = await checkBundle(file, signal);

  const fh = await fs.open(file, 'r').catch((e: unknown) => {
    throw ioError(e, `reading ${file}`, { path: file });
  });
  const readRecord = async (at: number, len: number) => {
    const b = Buffer.allocUnsafe(len);
    let got = 0;
    while (got < len) {
      const { bytesRead } = await fh.read(b, got, len - got, at + got).catch((e: unknown) => {
        throw ioError(e, `reading ${file}`, { path: file });
      });
      // The first pass read this record whole: a file cut short since then is not read as garbage.
      if (bytesRead === 0) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record it held when it was checked`, { path: file, offset: at });
      got += bytesRead;
    }
    return packr.unpack(b) as Record<string, unknown>;
  };
  const report: ImportReport = { imported: [], incomplete: [] };
  let taken = 0;
  let cache: { at: number; rec: Record<string, unknown> } | undefined;
  try {
    for (const b of blobs) {
      aborted();
      const list = async function* () {
        let offset = 0;
        for (const [at, len] of b.lists) {
          aborted();
          for (const [hash, size] of (await readRecord(at, len)).c as WireChunk[]) {
            yield { hash, size, offset };
            offset += size;
          }
        }
      };
      // Is every chunk here or in the bundle? Say exactly what is not.
      const missing: ImportReport['incomplete'][number]['missing'] = [];
      const alive = new Map<string, boolean>();
      let missingCount = 0;
      for await (const c of list()) {
        if (data.has(toHex(c.hash))) continue;
        if (await liveLocation(store.index, store.layout, c.hash, alive)) continue;
        missingCount++;
        if (missing.length < 100) missing.push(withHexJSON({ hash: Uint8Array.from(c.hash), offset: c.offset, size: c.size }));
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
          taken += out.reduce((a, x) => a + x.length, 0);
          options.onProgress?.(taken);
          return out;
        },
      };
      try {
        report.imported.push(await receive(store, src, b.name, { label: `bundle:${file}`, signal }));
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

/**
 * A bundle header names the hash its chunks are named by, which must be
 * ours (ERR_VERSION), and the sender's chunker params, which must be params
 * a store could have (ERR_BUNDLE_CORRUPT) but need not be ours: the import
 * re-chunks what it writes, only dedup against this store's blobs is smaller.
 */
function checkHeader(r: Record<string, unknown>, bad: (why: string) => CabError): void {
  if (typeof r.hash !== 'string') throw bad('the bundle header names no hash');
  if (r.hash !== HASH_NAME) throw new CabError('ERR_VERSION', `the bundle names chunks by ${JSON.stringify(r.hash.slice(0, 32))}, this store by ${HASH_NAME}`, { expected: HASH_NAME, found: r.hash.slice(0, 32) });
  const c = r.chunker as Record<string, unknown> | undefined;
  if (c === null || typeof c !== 'object' || Array.isArray(c)) throw bad('the bundle header has no chunker params');
  try {
    resolveStoreChunkerParams({ min: c.min as number, avg: c.avg as number, max: c.max as number });
  } catch (e) {
    if (!isCabError(e, 'ERR_BAD_CHUNKER_PARAMS')) throw e;
    throw bad(`the bundle header's chunker params: ${e.message}`);
  }
}
