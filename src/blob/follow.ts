import fs, { type FSWatcher } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { CabError, abortError, ioError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import { BlobBytes, readExtents } from '../disk/blob-bytes.js';
import { ChunkPager } from '../disk/chunk-pager.js';
import type { FragmentFiles } from '../disk/fragments.js';
import { openDescriptor, readDescriptorFrom, type Descriptor } from '../format/descriptor.js';
import type { StoreInternals } from './context.js';

/**
 * How often a follower looks at the descriptor besides watching it: a watch
 * can fail to start (inotify limits, some network file systems) or miss an
 * event, and this bounds what either costs.
 */
export const FOLLOW_POLL_MS = 100;

/**
 * What a reader reads from: a parse of its descriptor, the file it came
 * from, and (following) the open chunk's bytes once they were checked
 * against the record's `p`.
 */
export interface View {
  d: Descriptor;
  desc: FileHandle;
  bytes: BlobBytes;
  /** The bytes [d.chunkEnd, d.size), checked against d.openHash; undefined when there are none or they could not be checked. */
  open: Uint8Array | undefined;
}

export function makeView(d: Descriptor, desc: FileHandle, files: FragmentFiles, pager = new ChunkPager(desc, d.chunkRecords)): View {
  return { d, desc, bytes: new BlobBytes(d.name, d, pager, files), open: undefined };
}

/**
 * Wakes a follower when its blob's descriptor may have changed, whichever
 * process changes it: a watch on the file (its appends, and the unlink of a
 * delete; a new blob's writer appends through the name the file had in
 * tmp/, which a watch of blob/ would not hear) and one on its directory
 * (the rename of a rewrite, and appends through the blob's own name), and
 * a poll every FOLLOW_POLL_MS. `seq` counts the events, so a change that
 * comes between a look and the wait after it is not slept through.
 */
export class DescriptorWatch {
  readonly #watchers: FSWatcher[] = [];
  #seq = 0;
  readonly #waiters = new Set<() => void>();

  constructor(file: string) {
    const base = path.basename(file);
    this.#watch(file, () => true);
    this.#watch(path.dirname(file), (f) => f === null || f === base);
  }

  #watch(target: string, mine: (f: string | null) => boolean): void {
    try {
      const w = fs.watch(target, { persistent: false }, (_event, f) => mine(f) && this.#wake());
      w.on('error', () => w.close());
      this.#watchers.push(w);
    } catch (e) {
      // No watch (ENOSPC: the inotify limit, EMFILE, ENOENT: deleted already): the poll alone.
      if (typeof (e as NodeJS.ErrnoException).code !== 'string') throw e;
    }
  }

  get seq(): number {
    return this.#seq;
  }

  #wake(): void {
    this.#seq++;
    for (const w of [...this.#waiters]) w();
  }

  /** Resolves once an event has come after `seq` (at once if one has), or after FOLLOW_POLL_MS. ERR_ABORTED if `signal` fires. */
  wait(seq: number, signal: AbortSignal | undefined, what: string): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortError(signal, what));
    if (this.#seq !== seq) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        done();
        reject(abortError(signal!, what));
      };
      const timer = setTimeout(done, FOLLOW_POLL_MS);
      this.#waiters.add(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  close(): void {
    for (const w of this.#watchers.splice(0)) w.close();
    for (const w of [...this.#waiters]) w();
  }
}

/**
 * A follower's side of a blob being written: grows a view to what the
 * descriptor holds now, publishing pins for the fragments it adds (as a
 * reader's open does, under the GC gate) and keeping the list of what it
 * pinned. Descriptors only grow by appended records; a rewrite (a cut
 * back, a heal) is a new file under the same name, parsed afresh; a delete
 * unlinks the name, and the follower ends with ERR_NO_SUCH_BLOB.
 */
export class Follow {
  /** Made at the first wait: a reader that never waits (of a finalized blob, a server's) watches nothing. */
  #watch: DescriptorWatch | undefined;
  /** The fragments this follower has pinned (the reader unpins them at close). */
  readonly pinned: Set<string>;
  /** Descriptor files this follower has opened, closed with the reader (an older view may still be reading through one). */
  readonly descs: FileHandle[] = [];
  readonly #s: StoreInternals;
  readonly #name: string;
  readonly #files: FragmentFiles;
  /** The grow under way: one at a time, since a parse grows the view's extent map in place. */
  #growing: Promise<View> | undefined;

  constructor(s: StoreInternals, name: string, files: FragmentFiles, pinned: readonly string[]) {
    this.#s = s;
    this.#name = name;
    this.#files = files;
    this.pinned = new Set(pinned);
  }

  get watch(): DescriptorWatch {
    this.#watch ??= new DescriptorWatch(this.#s.layout.descriptor(this.#name));
    return this.#watch;
  }

  /**
   * The view grown to what the descriptor holds now, or `v` itself if it
   * holds nothing new (a record half written counts as nothing yet).
   * ERR_NO_SUCH_BLOB once the blob is deleted; a rewrite that cut the blob
   * back below `shown` (bytes already handed out) is ERR_ILLEGAL_POSITION.
   */
  grow(v: View, shown: number): Promise<View> {
    // A second caller shares the grow under way (its view is the same), and looks again once it has ended.
    this.#growing ??= this.#grow(v, shown).finally(() => (this.#growing = undefined));
    return this.#growing;
  }

  async #grow(v: View, shown: number): Promise<View> {
    const name = this.#name;
    const file = this.#s.layout.descriptor(name);
    return this.#s.lease.gate(async () => {
      let st: fs.Stats;
      try {
        st = await fsp.stat(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new CabError('ERR_NO_SUCH_BLOB', `blob ${name} was deleted while it was followed`, { blob: name });
        throw ioError(e, `following blob ${name}`, { blob: name, path: file });
      }
      let next: View;
      if (st.ino !== v.d.ino) {
        const desc = await openDescriptor(file, name, 'r');
        this.descs.push(desc);
        next = makeView(await readDescriptorFrom(desc, name), desc, this.#files);
        if (next.d.size < shown) {
          throw new CabError('ERR_ILLEGAL_POSITION', `blob ${name} was cut back to ${next.d.size} bytes while followed, below the ${shown} read`, { blob: name, offset: shown, expected: next.d.size });
        }
      } else if (st.size !== v.d.validEnd) {
        const d = await readDescriptorFrom(v.desc, name, { from: v.d });
        if (d.validEnd === v.d.validEnd) return v;
        next = makeView(d, v.desc, this.#files);
      } else return v;
      const fresh = next.d.extents.fragments().filter((f) => !this.pinned.has(f));
      if (fresh.length > 0) {
        await this.#s.lease.pin(fresh);
        for (const f of fresh) this.pinned.add(f);
      }
      next.open = await this.checkOpen(next);
      return next;
    });
  }

  /**
   * The open chunk's bytes (after the last chunk boundary) read and checked
   * against the last record's `p`, the SHA-256 of them all: a follower hands
   * them out only so. Undefined if there are none, or no `p` to check them
   * with (a record from before `p`): the follower then waits for the chunk
   * to end. Bounded by the chunker's max chunk size.
   */
  async checkOpen(v: View): Promise<Uint8Array | undefined> {
    const { d } = v;
    if (d.finalized || d.size === d.chunkEnd || !d.openHash) return undefined;
    const bytes = Buffer.allocUnsafe(d.size - d.chunkEnd);
    await readExtents(this.#files, d.extents, bytes, d.chunkEnd);
    const found = sha256(bytes);
    if (!bytesEqual(found, d.openHash)) {
      throw new CabError('ERR_HASH_MISMATCH', `blob ${this.#name}: bytes ${d.chunkEnd}..${d.size} do not hash to their recorded open chunk`, {
        blob: this.#name,
        offset: d.chunkEnd,
        size: bytes.length,
        expected: toHex(d.openHash),
        found: toHex(found),
      });
    }
    return bytes;
  }

  close(): void {
    this.#watch?.close();
  }
}
