import fs from 'node:fs/promises';
import crypto from 'node:crypto';
import { CabError } from '../errors.js';
import { ensureDir, fsyncDir } from './durable.js';
import type { Layout } from './layout.js';

/**
 * A fragment being written: a temp file in tmp/, opened exclusively, hashed
 * as it is written, then fsync'd and renamed into cas/ under its SHA-256.
 * The temp file is removed on every path that does not rename it.
 */
export class FragmentWriter {
  readonly tmpPath: string;
  readonly #fh: fs.FileHandle;
  readonly #hash = crypto.createHash('sha256');
  #size = 0;
  #done = false;

  private constructor(tmpPath: string, fh: fs.FileHandle) {
    this.tmpPath = tmpPath;
    this.#fh = fh;
  }

  static async create(layout: Layout): Promise<FragmentWriter> {
    const tmpPath = layout.tmpFile();
    return new FragmentWriter(tmpPath, await fs.open(tmpPath, 'wx'));
  }

  /** Bytes written (or handed to `write`) so far. */
  get size(): number {
    return this.#size;
  }

  /**
   * Appends `bufs` at the end. The caller must not start another write
   * before this one resolves, nor change the buffers until then.
   */
  async write(bufs: Uint8Array[]): Promise<void> {
    let n = 0;
    for (const b of bufs) {
      this.#hash.update(b);
      n += b.length;
    }
    const at = this.#size;
    this.#size += n;
    let written = 0;
    // writev may write less than asked; finish the rest.
    while (written < n) {
      const rest = written === 0 ? bufs : remainder(bufs, written);
      const { bytesWritten } = await this.#fh.writev(rest, at + written);
      written += bytesWritten;
    }
  }

  /** Makes the fragment durable under its name; returns the name. */
  async seal(layout: Layout, knownDirs: Set<string>): Promise<string> {
    const id = this.#hash.digest('hex');
    await this.#fh.sync();
    await this.#fh.close();
    const dir = layout.fragmentDir(id);
    try {
      await ensureDir(dir, knownDirs);
      // An existing fragment of this name has these very bytes; replacing it is harmless.
      await fs.rename(this.tmpPath, layout.fragment(id));
      this.#done = true;
      await fsyncDir(dir);
    } finally {
      if (!this.#done) await fs.rm(this.tmpPath, { force: true });
    }
    return id;
  }

  /** Drops the temp file. Safe to call at any time, and twice. */
  async discard(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#fh.close().catch(() => {});
    await fs.rm(this.tmpPath, { force: true });
  }
}

function remainder(bufs: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

/** Open fragment files, a few at a time, for reading. */
export class FragmentFiles {
  readonly #layout: Layout;
  readonly #open = new Map<string, Promise<fs.FileHandle>>();
  readonly #max: number;

  constructor(layout: Layout, max = 32) {
    this.#layout = layout;
    this.#max = max;
  }

  #handle(frag: string): Promise<fs.FileHandle> {
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
      throw e;
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
    const all = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(all.map((p) => p.then((fh) => fh.close()).catch(() => {})));
  }
}
