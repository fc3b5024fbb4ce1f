import { CabError, throwIfAborted } from '../errors.js';
import type { BlobStore } from '../store.js';
import { RecordWriter, scan } from './records.js';

/**
 * A have-file: what chunks a store holds, for a sender to leave them out of
 * a bundle. Records (see records.ts):
 *
 *   "CABHAVE1"  {t:'have', v, chunker}  {t:'hashes', p: 8-byte prefixes, sorted}...  {t:'end', records, chunks}
 */
const HAVE_MAGIC = Buffer.from('CABHAVE1');
const PREFIX = 8;

export interface HaveOptions {
  /** Cancels: it rejects with ERR_ABORTED, and no have-file (not even part of one) is left at the target path. */
  signal?: AbortSignal;
}

/**
 * A compact summary of the chunks a store holds: sorted 8-byte hash
 * prefixes. `file` is written as exportBundle writes a bundle: a regular
 * file whole or not at all, a symlink's target, a device or FIFO directly.
 */
export async function writeHave(store: BlobStore, file: string, options: HaveOptions = {}): Promise<{ chunks: number; bytes: number }> {
  const aborted = () => throwIfAborted(options.signal, `writing ${file}`);
  aborted();
  const w = await RecordWriter.create(file, HAVE_MAGIC);
  try {
    const { min, avg, max } = store.chunker;
    await w.put({ t: 'have', v: 1, chunker: { min, avg, max } });
    let n = 0;
    let last: Uint8Array | undefined;
    for (;;) {
      aborted();
      const page = store.index.chunkHashPage(last, 65536);
      if (page.length === 0) break;
      last = page[page.length - 1];
      // Prefixes of distinct hashes may repeat; a repeat costs 8 bytes and no harm.
      await w.put({ t: 'hashes', p: Buffer.concat(page.map((h) => h.subarray(0, PREFIX))) });
      n += page.length;
    }
    aborted();
    await w.finish({ chunks: n });
    return { chunks: n, bytes: w.size };
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** What a have-file says a store holds. */
export class HaveSet {
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

/**
 * Reads and checks a have-file: the header first, then prefixes in order
 * (the lookup is a binary search: unsorted prefixes would answer wrongly),
 * nothing else. ERR_BUNDLE_CORRUPT or ERR_BUNDLE_TRUNCATED otherwise.
 */
export async function readHave(file: string, signal?: AbortSignal): Promise<HaveSet> {
  const parts: Buffer[] = [];
  let header = false;
  let last: Buffer | undefined;
  await scan(file, HAVE_MAGIC, (r, at) => {
    throwIfAborted(signal, `reading ${file}`);
    const bad = (why: string) => new CabError('ERR_BUNDLE_CORRUPT', `${file}: ${why}`, { path: file, offset: at });
    if (r.t === 'have') {
      if (header || r.v !== 1) throw bad('a bad or second have header');
      header = true;
    } else if (r.t === 'hashes') {
      if (!header) throw bad('hashes before the have header');
      if (!(r.p instanceof Uint8Array) || r.p.length % PREFIX) throw bad('a hashes record is malformed');
      const p = Buffer.from(r.p);
      for (let i = 0; i < p.length; i += PREFIX) {
        const cur = p.subarray(i, i + PREFIX);
        if (last && Buffer.compare(last, cur) > 0) throw bad('the hash prefixes are not sorted');
        last = cur;
      }
      parts.push(p);
    } else if (r.t !== 'end') {
      throw bad(`an unknown record ${JSON.stringify(String(r.t).slice(0, 20))}`);
    }
  });
  if (!header) throw new CabError('ERR_BUNDLE_CORRUPT', `${file} has no have header`, { path: file });
  return new HaveSet(Buffer.concat(parts));
}
