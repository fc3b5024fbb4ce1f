import fs from 'node:fs/promises';
import { read as fdRead, readSync as fdReadSync } from 'node:fs';
import { CabError, ioError } from '../errors.js';
import type { Layout } from '../format/layout.js';
import type { BucketLayout } from '../bucket/keys.js';
import type { ObjectStore } from '../bucket/object-store.js';
import { FragmentCache } from './cache.js';
import { Download, missingIfAbsent, type CheckedChunk } from './download.js';
import type { ChunkPlan } from './fetch-thread.js';

/** The chunks a reader wants checked as a fragment is fetched (see ChunkPlan), asked for only when it is. */
export type PlanFor = () => Promise<ChunkPlan | undefined>;

/** An open fragment, local or being fetched. */
export interface FragmentHandle {
  /** Reads up to `len` bytes at `pos`; fewer only at the end, 0 past it. */
  read(buf: Uint8Array, off: number, len: number, pos: number): Promise<number>;
  /** See Download.readChecked (a fragment being fetched only). */
  readChecked?(buf: Uint8Array, off: number, pos: number, run: readonly CheckedChunk[]): Promise<number>;
  /** The same, blocking (a file in cas/ only): for a caller whose next step waits on the read anyway (see FragmentFiles.read). */
  readSync?(buf: Uint8Array, off: number, len: number, pos: number): number;
  close(): Promise<void>;
}

/** The bucket behind a store's cas/. */
export interface RemoteCas {
  os: ObjectStore;
  keys: BucketLayout;
  cache: FragmentCache;
}

/**
 * Where a store's fragments are: cas/ on disk, and for a bucket-backed
 * store the bucket, with cas/ as its cache. Reading a fragment that is not
 * in cas/ fetches it (see Download); a sealed fragment is uploaded before
 * it is renamed into cas/ (FragmentWriter.seal), so a record never names a
 * fragment the bucket lacks.
 */
export class Cas {
  readonly layout: Layout;
  /** Directories known to exist durably (so a fragment rename fsyncs only its own directory). */
  readonly knownDirs: Set<string>;
  readonly remote: RemoteCas | undefined;
  /** Fetches under way in this process, shared by its readers. */
  readonly #downloads = new Map<string, Promise<Download>>();

  constructor(layout: Layout, knownDirs: Set<string>, remote?: RemoteCas) {
    this.layout = layout;
    this.knownDirs = knownDirs;
    this.remote = remote;
  }

  /**
   * Opens a fragment for reading: cas/, else (bucket-backed) a fetch, which
   * checks the chunks of `plan` as they come. ERR_FRAGMENT_MISSING if it is
   * in neither.
   */
  async open(id: string, plan?: PlanFor): Promise<FragmentHandle> {
    let fh: fs.FileHandle;
    try {
      fh = await fs.open(this.layout.fragment(id), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(e, `opening fragment ${id}`, { fragment: id }); // EMFILE, EIO: ERR_IO, never "missing"
      if (!this.remote) {
        const next = 'fsck with repair (`cabstore fsck --repair`) records the damage in the blobs that use it, and a pull of each from a store that holds it heals it';
        throw new CabError('ERR_FRAGMENT_MISSING', `fragment ${id} is missing: ${next}`, { fragment: id, cause: e });
      }
      return this.#fetch(id, plan);
    }
    this.remote?.cache.touch(id);
    return localFragment(fh);
  }

  async #fetch(id: string, plan: PlanFor | undefined): Promise<FragmentHandle> {
    const remote = this.remote!;
    let p = this.#downloads.get(id);
    if (!p) {
      const layout = this.layout;
      const target = {
        key: remote.keys.fragment(id),
        tmp: layout.tmpFile('frag'),
        dir: layout.fragmentDir(id),
        final: layout.fragment(id),
        knownDirs: this.knownDirs,
        cached: (size: number) => remote.cache.add(id, size),
      };
      const started: Promise<Download> = Download.start(id, remote.os, target, () => this.#forget(id, started), plan);
      this.#downloads.set(id, started);
      started.catch(() => this.#forget(id, started));
      p = started;
    }
    const d = (await p).take();
    if (!d) return this.open(id, plan); // it ended as we came: the file is in cas/ now (or will be fetched anew)
    let closed = false;
    return {
      read: (buf, off, len, pos) => d.read(buf, off, len, pos),
      readChecked: (buf, off, pos, run) => d.readChecked(buf, off, pos, run),
      close: async () => {
        if (!closed) d.release();
        closed = true;
      },
    };
  }

  /** See FragmentFiles.dropCached: a download of it under way is not kept either. */
  async dropCached(id: string): Promise<void> {
    if (!this.remote) return;
    const p = this.#downloads.get(id);
    if (p) this.#downloads.delete(id);
    await p?.then((d) => d.discard(), () => {});
    this.remote.cache.forget(id);
    await fs.rm(this.layout.fragment(id), { force: true });
  }

  #forget(id: string, p: Promise<Download>): void {
    if (this.#downloads.get(id) === p) this.#downloads.delete(id);
  }

  /** A fragment's size where it is kept (the bucket, for a bucket-backed store); null if absent. */
  async size(id: string): Promise<number | null> {
    if (!this.remote) {
      try {
        return (await fs.stat(this.layout.fragment(id))).size;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw e;
      }
    }
    try {
      return (await this.remote.os.head(this.remote.keys.fragment(id)))?.size ?? null;
    } catch (e) {
      throw missingIfAbsent(e, id);
    }
  }

  /** Uploads a sealed fragment's file (write-once: an object of that name is this fragment already). */
  async upload(id: string, file: string, size: number): Promise<void> {
    if (this.remote) await this.remote.os.putIfAbsent(this.remote.keys.fragment(id), { file, size });
  }

  /** A fragment renamed into cas/. */
  added(id: string, size: number): void {
    this.remote?.cache.add(id, size);
  }
}

/**
 * A fragment file read with fs.read on its fd rather than FileHandle.read:
 * the promise API costs the calling thread about twice as much per call
 * (50 against 25 us measured on this VM), and a pull or a serve reads once
 * per chunk. Reads under way are counted, so that close waits for them, as
 * FileHandle.close does (an fd closed under a read could be reused by the
 * next open, and the read would land in another file).
 */
function localFragment(fh: fs.FileHandle): FragmentHandle {
  let reading = 0;
  let idle: (() => void) | undefined;
  let closed = false;
  const done = () => {
    if (--reading === 0) idle?.();
  };
  return {
    read: (buf, off, len, pos) =>
      new Promise<number>((resolve, reject) => {
        if (closed) return reject(Object.assign(new Error('EBADF: the fragment file is closed'), { code: 'EBADF', errno: -9 }));
        reading++;
        fdRead(fh.fd, buf, off, len, pos, (e, n) => {
          done();
          if (e) reject(e);
          else resolve(n);
        });
      }),
    readSync(buf, off, len, pos) {
      if (closed) throw Object.assign(new Error('EBADF: the fragment file is closed'), { code: 'EBADF', errno: -9 });
      return fdReadSync(fh.fd, buf, off, len, pos);
    },
    async close() {
      closed = true;
      if (reading > 0) await new Promise<void>((r) => (idle = r));
      await fh.close();
    },
  };
}
