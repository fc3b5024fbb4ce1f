import fs from 'node:fs/promises';
import { CabError, ioError } from '../errors.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import type { Layout } from '../format/layout.js';
import type { Cas } from '../disk/cas.js';

export interface FsckOptions {
  /** Also hash every blob's content against the hashes its descriptor records (reads all data). */
  verify?: boolean;
  /** Fix what can be fixed without losing anything a user could want (see FsckReport). */
  repair?: boolean;
  /** Called after each blob and fragment with bytes verified so far. */
  onProgress?: (p: { blobs: number; fragments: number; bytesVerified: number }) => void;
  signal?: AbortSignal;
}

export type FsckProblemKind =
  | 'corrupt-descriptor' // a bad header, or a bad record a crash cannot have left: never repaired (docs/FORMAT.md)
  | 'torn-descriptor' // bytes a crash left after the last good record
  | 'missing-fragment' // chunks of a blob lost with a fragment
  | 'short-fragment' // chunks of a blob past the end of a fragment
  | 'corrupt-fragment' // chunks of a blob that no longer hash to their recorded hash (--verify); `fragment` holds (part of) them
  | 'hash-mismatch' // a finalized blob's content does not hash to its recorded hash (--verify)
  | 'damaged' // a blob with damage recorded (by this or an earlier repair): only a pull or import heals it
  | 'index-mismatch' // the chunk index disagrees with a descriptor
  | 'index-orphan' // the chunk index has a blob with no descriptor
  | 'stray'; // something in tmp/ that cabstore did not make (a folder, a link, a name of no process): gc leaves it, never repaired

export interface FsckProblem {
  kind: FsckProblemKind;
  blob?: string;
  fragment?: string;
  /** The damaged blob bytes [offset, end), for damage. */
  offset?: number;
  end?: number;
  detail: string;
  repaired: boolean;
}

export interface FsckReport {
  blobs: number;
  fragments: number;
  /** Bytes hashed (verify): every blob's content, so data shared by blobs counts once per blob. */
  bytesVerified: number;
  problems: FsckProblem[];
  /** Damaged byte ranges of blobs, in whole chunks: recorded by this or an earlier repair, or found now. */
  damaged: Array<{ blob: string; offset: number; end: number; why: string }>;
  /**
   * Fragments that hold bytes of a chunk that no longer hashes to its
   * recorded hash (--verify; each listed once). A chunk that spans two
   * fragments names both, though only one may be bad: fragments are not
   * named by their bytes, so a blob's hashes are what tell (docs/FORMAT.md).
   */
  corruptFragments: string[];
  repaired: number;
  /** Problems not repaired: with repair, those that cannot be, such as damage itself. */
  unrepaired: number;
  seconds: number;
}

/** What one fsck run shares between its passes. */
export interface FsckContext {
  layout: Layout;
  /** Where fragments are (a bucket-backed store's: the bucket, cas/ its cache). */
  cas: Cas;
  index: ChunkIndex;
  opts: FsckOptions;
  report: FsckReport;
  fragSizes: Map<string, number | null>;
}

export function problem(ctx: FsckContext, p: Omit<FsckProblem, 'repaired'>, repaired = false): void {
  ctx.report.problems.push({ ...p, repaired });
  if (repaired) ctx.report.repaired++;
  else ctx.report.unrepaired++;
}

/** A fragment's size (in cas/, else in the bucket); null if it does not exist. Any other failure is an I/O error, not a missing fragment. */
export async function fragSize(ctx: FsckContext, id: string): Promise<number | null> {
  let s = ctx.fragSizes.get(id);
  if (s === undefined) {
    const file = ctx.layout.fragment(id);
    let st;
    try {
      st = await fs.stat(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `fsck: stat of fragment ${id}`, { path: file });
    }
    if (st && !st.isFile()) throw new CabError('ERR_IO', `fsck: fragment ${id} is not a regular file`, { path: file });
    // Not cached: the bucket says (a HEAD; only its NoSuchKey is absent, any other failure stops fsck).
    s = st ? st.size : ctx.cas.remote ? await ctx.cas.size(id) : null;
    ctx.fragSizes.set(id, s);
  }
  return s;
}
