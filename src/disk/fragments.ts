import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { CabError, ioError } from '../errors.js';
import { ensureDir, fsyncDir, writeAll } from './durable.js';
import type { Layout } from '../format/layout.js';

/**
 * A new fragment's name: 256 random bits (64 hex), not the hash of its
 * bytes. Naming a fragment by its content cost a SHA-256 pass over every
 * byte written, for nothing the format needs: every byte a blob holds is
 * checked by the hashes in its own descriptor (chunk hashes, the open
 * chunk's hash, the blob hash), which is what reads and fsck check
 * (docs/FORMAT.md, "Fragments").
 */
export function newFragmentId(): string {
  return crypto.randomBytes(32).toString('hex');
}

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

  /** Appends bytes from this thread (the writer's bytes go through the hashing thread and `fd` instead). */
  async write(bytes: Uint8Array): Promise<void> {
    const at = this.size;
    this.size += bytes.length;
    await writeAll(this.#fh, bytes, at);
  }

  /** Makes the fragment durable under its `id`, once all its bytes are written. */
  async seal(layout: Layout, knownDirs: Set<string>): Promise<void> {
    const id = this.id;
    await this.#fh.sync();
    await this.#fh.close();
    const dir = layout.fragmentDir(id);
    try {
      await ensureDir(dir, knownDirs);
      // 256 random bits: no other fragment has this name (a collision is as likely as one of SHA-256's).
      await fs.rename(this.tmpPath, layout.fragment(id));
      this.#done = true;
      await fsyncDir(dir);
    } finally {
      if (!this.#done) await fs.rm(this.tmpPath, { force: true });
    }
  }

  /** Drops the temp file. Only once nothing writes to it any more. Safe to call twice. */
  async discard(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#fh.close().catch(() => {});
    await fs.rm(this.tmpPath, { force: true });
  }
}

/** Open fragment files, a few at a time, for reading. */
export class FragmentFiles {
  readonly #layout: Layout;
  readonly #open = new Map<string, Promise<fs.FileHandle>>();
  readonly #max: number;
  #closed = false;

  constructor(layout: Layout, max = 32) {
    this.#layout = layout;
    this.#max = max;
  }

  #handle(frag: string): Promise<fs.FileHandle> {
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
      const [oldest, p] = this.#open.entries().next().value as [string, Promise<fs.FileHandle>];
      this.#open.delete(oldest);
      p.then((fh) => fh.close()).catch(() => {});
    }
    h = fs.open(this.#layout.fragment(frag), 'r').catch((e: NodeJS.ErrnoException) => {
      this.#open.delete(frag);
      if (e.code === 'ENOENT') throw new CabError('ERR_FRAGMENT_MISSING', `fragment ${frag} is missing`, { fragment: frag, cause: e });
      throw ioError(e, `opening fragment ${frag}`, { fragment: frag }); // EMFILE, EIO: ERR_IO, never "missing"
    });
    this.#open.set(frag, h);
    return h;
  }

  /** Reads exactly `len` bytes of fragment `frag` at `position` into buf[off..]. */
  async read(frag: string, buf: Uint8Array, off: number, len: number, position: number): Promise<void> {
    const fh = await this.#handle(frag);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await fh.read(buf, off + done, len - done, position + done);
      if (bytesRead === 0) {
        throw new CabError('ERR_FRAGMENT_MISSING', `fragment ${frag} is shorter than its extents`, {
          fragment: frag,
          expected: position + len,
          found: position + done,
        });
      }
      done += bytesRead;
    }
  }

  /** Opens a fragment now (so a reader holds it before it can be collected). */
  async hold(frag: string): Promise<void> {
    await this.#handle(frag);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(all.map((p) => p.then((fh) => fh.close()).catch(() => {})));
  }
}
