import fs from 'node:fs';
import path from 'node:path';
import { ioError } from '../errors.js';

/** LMDB's meta page magic (MDB_MAGIC), at the same place in both meta pages. */
const MAGIC = 0xbeefc0de;
/**
 * Where lmdb-js's LMDB keeps, in a meta page: the magic, the page size (the
 * free DB's md_pad), the root pages of the free and main DBs (md_root) and
 * the transaction id.
 */
const AT = { magic: 24, pageSize: 48, freeRoot: 88, mainRoot: 136, txnid: 152 } as const;
/** md_root of an empty DB (P_INVALID). */
const NO_PAGE = 0xffffffffffffffffn;
const META_BYTES = 160;

/**
 * Why the LMDB environment in `dir` cannot be opened safely, or undefined
 * if it can (or has no data file yet). LMDB trusts its file: a data file of
 * garbage, or cut short, makes it read outside its map and the process dies
 * of SIGSEGV, with no error to report. So before opening, the two meta
 * pages are checked (magic, page number, a sane page size), and the root
 * pages the newer one names must be in the file. Not "every page up to its
 * last page": pages made and freed in one transaction are never written, so
 * a sound file may be shorter (mdb.c says so of mm_last_pg). The size is
 * read after the meta pages: LMDB writes a transaction's pages before the
 * meta page naming them. Damage deeper in the file is not found here.
 */
export function lmdbDamage(dir: string): string | undefined {
  const file = path.join(dir, 'data.mdb');
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(e, 'opening an LMDB data file to check it', { path: file });
  }
  try {
    if (fs.fstatSync(fd).size === 0) return undefined; // made and never written: LMDB starts it afresh
    const meta = (page: number, pageSize: number): Buffer | string => {
      const b = Buffer.alloc(META_BYTES);
      if (fs.readSync(fd, b, 0, META_BYTES, page * pageSize) !== META_BYTES) return `meta page ${page} is cut short`;
      if (b.readBigUInt64LE(0) !== BigInt(page) || b.readUInt32LE(AT.magic) !== MAGIC) return `meta page ${page} is not an LMDB meta page`;
      return b;
    };
    const first = meta(0, 0);
    if (typeof first === 'string') return first;
    const pageSize = first.readUInt32LE(AT.pageSize);
    if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) return `page size ${pageSize} is not one LMDB uses`;
    const second = meta(1, pageSize);
    if (typeof second === 'string') return second;
    const newer = first.readBigUInt64LE(AT.txnid) >= second.readBigUInt64LE(AT.txnid) ? first : second;
    const pages = BigInt(Math.floor(fs.fstatSync(fd).size / pageSize));
    for (const at of [AT.freeRoot, AT.mainRoot]) {
      const root = newer.readBigUInt64LE(at);
      if (root !== NO_PAGE && root >= pages) return `a root page (${root}) is past the end of the file (${pages} pages of ${pageSize})`;
    }
    return undefined;
  } catch (e) {
    throw ioError(e, 'checking an LMDB data file', { path: file });
  } finally {
    fs.closeSync(fd);
  }
}
