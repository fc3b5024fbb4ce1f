import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { CabError, ioError } from '../errors.js';
import { ensureDir, fsyncDir, writeAll } from './durable.js';
import type { Layout } from '../format/layout.js';
import type { Cas, FragmentHandle, PlanFor } from './cas.js';
import type { CheckedChunk } from './download.js';

/**
 * Fragments this process names in a row that share their first four hex
 * digits, and so their directory cas/ab/cd/ (see newFragmentId).
 */
export const FRAGMENTS_PER_DIRECTORY = 256;
let dirPrefix = '';
let dirLeft = 0;

/**
 * A new fragment's name: 64 random hex digits, not the hash of its bytes.
 * Naming a fragment by its content cost a SHA-256 pass over every byte
 * written, for nothing the format needs: every byte a blob holds is
 * checked by the hashes in its own descriptor (chunk hashes, the open
 * chunk's hash, the blob hash), which is what reads and fsck check
 * (docs/FORMAT.md, "Fragments").
 *
 * The first four digits (the directory) are shared by up to
 * FRAGMENTS_PER_DIRECTORY names in a row, the other 60 (240 bits) are new
 * for each. A writer checkpointing every 4 MiB (a tus upload) seals a
 * fragment per checkpoint: with four fresh random digits each went to a
 * directory of its own, which the first fragments of a store (and most,
 * until it holds tens of thousands) had to create, with cas/ab/, and
 * fsync with their parents (two mkdirs, two more directory fsyncs and
 * three stats per checkpoint).
 */
export function newFragmentId(): string {
  if (dirLeft === 0) {
    dirPrefix = crypto.randomBytes(2).toString('hex');
    dirLeft = FRAGMENTS_PER_DIRECTORY;
  }
  dirLeft--;
  return dirPrefix + crypto.randomBytes(30).toString('hex');
}

/**
 * Bytes of a fragment between background writebacks (FragmentWriter.assign).
 * The fsync that seals a fragment wrote all of its bytes to disk at once:
 * 30 to 60 ms for 64 MiB here, and for the last fragment of a put in the
 * caller's wait (close). Written back in steps as it fills, the seal's
 * fsync has only the last step's bytes to write. Fragments smaller than
 * this (a tus upload's, checkpointed every 4 MiB) are never written back
 * early: their seal's fsync is short already.
 */
export const WRITEBACK_BYTES = 16 * 1024 * 1024;

/**
 * A fragment being written: a temp file in tmp/, opened exclusively. Its
 * bytes are written by the hashing thread (src/hash/pool.ts) through `fd`,
 * or by `write`; `seal` makes it durable under its name `id`, chosen now.
 * The temp file is removed on every path that does not rename it.
 */
export class FragmentWriter {
  readonly tmpPath: string;
  /** The name it gets in cas/ (newFragmentId). */
  readonly id = newFragmentId();
  readonly #fh: fs.FileHandle;
  /** Bytes assigned so far: the offset of the next write. */
  size = 0;
  #done = false;
  /** The background writeback under way (writeback), and the first failure of one: the seal fails with it. */
  #syncing: Promise<void> | undefined;
  #syncError: unknown;
  /** Where `size` stood at the last writeback. */
  #syncedAt = 0;

  private constructor(tmpPath: string, fh: fs.FileHandle) {
    this.tmpPath = tmpPath;
    this.#fh = fh;
  }

  static async create(layout: Layout): Promise<FragmentWriter> {
    const tmpPath = layout.tmpFile();
    return new FragmentWriter(tmpPath, await fs.open(tmpPath, 'wx'));
  }

  get fd(): number {
    return this.#fh.fd;
  }

  /**
   * The offset of `len` more bytes, to be written through `fd`: once every
   * WRITEBACK_BYTES assigned, the bytes written by then start going to
   * disk in the background (writeback).
   */
  assign(len: number): number {
    const at = this.size;
    this.size += len;
    if (this.size - this.#syncedAt >= WRITEBACK_BYTES) this.writeback();
    return at;
  }

  /**
   * Starts an fdatasync of what is written so far on libuv's pool, unless
   * one is under way: the seal's fsync then has less to write. Not a
   * durability point (nothing relies on it). A failure is kept and fails
   * the seal: the kernel reports a writeback error to one fsync of a file
   * descriptor only, and it may be this one.
   */
  writeback(): void {
    if (this.#syncing || this.#done) return;
    this.#syncedAt = this.size;
    this.#syncing = this.#fh.datasync().then(
      () => {
        this.#syncing = undefined;
      },
      (e: unknown) => {
        this.#syncError ??= e;
        this.#syncing = undefined;
      },
    );
  }

  /** Whether a background writeback is under way. */
  get writingBack(): boolean {
    return this.#syncing !== undefined;
  }

  /** Appends bytes from this thread (the writer's bytes go through the hashing thread and `fd` instead). */
  async write(bytes: Uint8Array): Promise<void> {
    const at = this.size;
    this.size += bytes.length;
    await writeAll(this.#fh, bytes, at);
  }

  /**
   * Makes the fragment durable under its `id`, once all its bytes are
   * written: fsync'd, and for a bucket-backed store uploaded (at the same
   * time), then renamed into cas/. A record may name it once this resolves.
   */
  async seal(cas: Cas): Promise<void> {
    const id = this.id;
    const { layout } = cas;
    try {
      // The fsync does not wait for a writeback under way (on a busy disk, two flushes in a row): they run together.
      await Promise.all([this.#syncing, this.#fh.sync(), cas.upload(id, this.tmpPath, this.size)]);
      if (this.#syncError !== undefined) throw ioError(this.#syncError, `writing fragment ${id} back to disk`, { fragment: id });
      await this.#fh.close();
      const dir = layout.fragmentDir(id);
      await ensureDir(dir, cas.knownDirs);
      // 256 random bits: no other fragment has this name (a collision is as likely as one of SHA-256's).
      await fs.rename(this.tmpPath, layout.fragment(id));
      this.#done = true;
      await fsyncDir(dir);
      cas.added(id, this.size);
    } finally {
      if (!this.#done) {
        await this.#fh.close().catch(() => {});
        await fs.rm(this.tmpPath, { force: true });
      }
    }
  }

  /** Drops the temp file. Only once nothing writes to it any more. Safe to call twice. */
  async discard(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#syncing; // its fd stays open until it ends (a closed fd's number may be another file's by then)
    await this.#fh.close().catch(() => {});
    await fs.rm(this.tmpPath, { force: true });
  }
}

/** Open fragment files, a few at a time, for reading (a bucket-backed store's from the bucket when not cached). */
export class FragmentFiles {
  readonly #cas: Cas;
  readonly #open = new Map<string, Promise<FragmentHandle>>();
  /** The handles of #open that have opened, for a blocking read (read with `now`). */
  readonly #ready = new Map<string, FragmentHandle>();
  readonly #max: number;
  #closed = false;

  constructor(cas: Cas, max = 32) {
    this.#cas = cas;
    this.#max = max;
  }

  #handle(frag: string, plan?: PlanFor): Promise<FragmentHandle> {
    // After close, a read still under way must not open a file that nothing would close (a leak of fds).
    if (this.#closed) return Promise.reject(new CabError('ERR_CLOSED', `fragment files are closed (fragment ${frag})`, { fragment: frag }));
    let h = this.#open.get(frag);
    if (h) {
      // refresh its place in the LRU order
      this.#open.delete(frag);
      this.#open.set(frag, h);
      return h;
    }
    if (this.#open.size >= this.#max) {
      const [oldest, p] = this.#open.entries().next().value as [string, Promise<FragmentHandle>];
      this.#open.delete(oldest);
      this.#ready.delete(oldest);
      p.then((fh) => fh.close()).catch(() => {});
    }
    const opening = this.#cas.open(frag, plan);
    opening.then(
      (fh) => {
        if (this.#open.get(frag) === opening) this.#ready.set(frag, fh);
      },
      () => this.#open.delete(frag),
    );
    this.#open.set(frag, opening);
    return opening;
  }

  /** Whether fragments may come from a bucket (then a read starts fetching the ones that follow: prefetch). */
  get remote(): boolean {
    return this.#cas.remote !== undefined;
  }

  /** Opens fragment `frag` (kept open, as a read would): ERR_FRAGMENT_MISSING if it is not there. */
  async open(frag: string): Promise<void> {
    await this.#handle(frag);
  }

  /** Starts opening (for a bucket-backed store: fetching, with the chunks of `plan` checked as they come) a fragment a read will soon need. */
  prefetch(frag: string, plan?: PlanFor): void {
    if (!this.#closed && !this.#open.has(frag)) this.#handle(frag, plan).catch(() => {}); // the read that needs it sees the failure
  }

  /**
   * Reads chunks `run` of fragment `frag`, one after another from
   * `position`, into buf[off..]: returns how many, from the first, were
   * read checked on the way (by the fetching thread: see
   * Download.readChecked). If none, the first is read as `read` does and
   * 0 returned: the caller checks it. `plan`: as for prefetch.
   */
  async readChunks(frag: string, buf: Uint8Array, off: number, position: number, run: readonly CheckedChunk[], plan?: PlanFor): Promise<number> {
    const fh = await this.#handle(frag, plan);
    const n = (await fh.readChecked?.(buf, off, position, run)) ?? 0;
    if (n === 0) await this.read(frag, buf, off, run[0]!.size, position);
    return n;
  }

  /**
   * Reads exactly `len` bytes of fragment `frag` at `position` into buf[off..].
   * `now`: if the fragment is open already and in cas/, by a blocking read.
   * For a chain of steps that each wait on their read (a pull's writer
   * taking local ranges): an asynchronous read's completion waits its turn
   * behind everything else the event loop has to do, measured at 1.7-2.4 ms
   * for 640 KiB from the page cache during a pull, against about 0.1 ms
   * read at once.
   */
  async read(frag: string, buf: Uint8Array, off: number, len: number, position: number, now = false): Promise<void> {
    const ready = now && !this.#closed ? this.#ready.get(frag) : undefined;
    let fh: FragmentHandle;
    if (ready?.readSync) {
      // Its place in the LRU order, as #handle would refresh it.
      const h = this.#open.get(frag)!;
      this.#open.delete(frag);
      this.#open.set(frag, h);
      fh = ready;
    } else fh = await this.#handle(frag);
    let done = 0;
    while (done < len) {
      let bytesRead: number;
      try {
        bytesRead = ready?.readSync ? ready.readSync(buf, off + done, len - done, position + done) : await fh.read(buf, off + done, len - done, position + done);
      } catch (e) {
        throw ioError(e, `reading fragment ${frag}`, { fragment: frag });
      }
      if (bytesRead === 0) {
        await this.dropCached(frag);
        throw new CabError('ERR_FRAGMENT_MISSING', `fragment ${frag} is shorter than its extents`, {
          fragment: frag,
          expected: position + len,
          found: position + done,
        });
      }
      done += bytesRead;
    }
  }

  /**
   * A bucket-backed store's fragment whose bytes failed a check here (a
   * wrong answer from the bucket, a damaged cache file): its handle closed
   * and its cached copy dropped, so the next read fetches it anew. The
   * bucket's object is the fragment; the cache is only a copy. A store
   * without a bucket keeps its fragment (fsck records the damage).
   */
  async dropCached(frag: string): Promise<void> {
    if (!this.remote) return;
    const h = this.#open.get(frag);
    this.#open.delete(frag);
    this.#ready.delete(frag);
    await h?.then((fh) => fh.close()).catch(() => {});
    await this.#cas.dropCached(frag);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#open.values()];
    this.#open.clear();
    this.#ready.clear();
    await Promise.all(all.map((p) => p.then((fh) => fh.close()).catch(() => {})));
  }
}
