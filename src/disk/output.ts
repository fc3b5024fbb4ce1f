// A file the user names for output (get -o, have, export): where the bytes
// go, decided once, before any work, the same way for every command.
import fs from 'node:fs/promises';
import { constants } from 'node:fs';
import path from 'node:path';
import { CabError, ioError } from '../errors.js';
import { Replacement, writeAll } from './durable.js';

/** Links followed before giving up, as the kernel does (ELOOP). */
const MAX_LINKS = 40;

/** An output being written; see openOutput. */
export interface OutputFile {
  /** The file written: the target named, with symlinks resolved. */
  readonly path: string;
  /** Bytes written so far. */
  readonly size: number;
  /** Appends all of `bytes` (a short write is continued). */
  write(bytes: Uint8Array): Promise<void>;
  /** Puts the output in place, durably: nothing is at the target before this. */
  commit(): Promise<void>;
  /** Gives up: a temp file is removed, a device or FIFO is closed. Safe on every path, also after commit. */
  abort(): Promise<void>;
}

/**
 * Opens `file` for output as the user means it. A regular file, or none,
 * is written as a temp file beside it that commit() fsyncs and renames into
 * place: a failure leaves the old file, or nothing. A symlink is followed
 * (a chain too, or a dangling one) and the file it names is replaced, not
 * the link. A device, FIFO or socket (/dev/null, /dev/stdout, a named pipe)
 * is written directly, never replaced. A directory, or a missing parent
 * directory, is ERR_IO now, before any work. Errors are CabErrors (ERR_IO,
 * ERR_NO_SPACE) naming the file.
 */
export async function openOutput(file: string): Promise<OutputFile> {
  const io = (e: unknown) => ioError(e, `writing ${file}`, { path: file });
  let target: { path: string; direct: boolean };
  try {
    target = await resolveOutput(file);
  } catch (e) {
    throw io(e);
  }
  return target.direct ? Direct.open(target.path, io) : Replaced.open(target.path, io);
}

/**
 * Where output to `file` goes: written directly (anything that exists and is
 * neither a regular file nor a directory: stat follows links, also Linux's
 * /proc/self/fd ones, which name no path), else the real path to replace.
 */
async function resolveOutput(file: string): Promise<{ path: string; direct: boolean }> {
  let st: import('node:fs').Stats | undefined;
  try {
    st = await fs.stat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (st?.isDirectory()) throw new CabError('ERR_IO', `writing ${file}: it is a directory (EISDIR)`, { path: file, found: 'EISDIR' });
  if (st && !st.isFile()) return { path: file, direct: true };
  if (st) return { path: await fs.realpath(file), direct: false };
  // Absent, or a link to nothing: follow the links by hand to the name to create.
  let p = path.resolve(file);
  for (let links = 0; ; links++) {
    let link: string;
    try {
      link = await fs.readlink(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EINVAL') throw e; // EINVAL: p exists now and is no link (made meanwhile)
      break;
    }
    if (links === MAX_LINKS) throw Object.assign(new Error(`too many symbolic links from ${file}`), { code: 'ELOOP' });
    p = path.resolve(path.dirname(p), link);
  }
  // The parent must exist (ENOENT otherwise, now rather than after the work).
  return { path: path.join(await fs.realpath(path.dirname(p)), path.basename(p)), direct: false };
}

/** A regular file: a temp file renamed onto it by commit(). */
class Replaced implements OutputFile {
  size = 0;
  private constructor(
    readonly path: string,
    readonly r: Replacement,
    readonly io: (e: unknown) => CabError,
  ) {}
  static async open(file: string, io: (e: unknown) => CabError): Promise<Replaced> {
    try {
      return new Replaced(file, await Replacement.open(file), io);
    } catch (e) {
      throw io(e);
    }
  }
  async write(bytes: Uint8Array): Promise<void> {
    try {
      await writeAll(this.r.fh, bytes, this.size);
    } catch (e) {
      throw this.io(e);
    }
    this.size += bytes.length;
  }
  async commit(): Promise<void> {
    try {
      await this.r.commit();
    } catch (e) {
      throw this.io(e);
    }
  }
  abort(): Promise<void> {
    return this.r.abort();
  }
}

/**
 * A device, FIFO or socket: written in place, in order (a pipe has no
 * positions). Opened without O_CREAT or O_TRUNC: nothing is made or cut.
 * A FIFO's open waits for its reader.
 */
class Direct implements OutputFile {
  size = 0;
  #open = true;
  private constructor(
    readonly path: string,
    readonly fh: fs.FileHandle,
    readonly io: (e: unknown) => CabError,
  ) {}
  static async open(file: string, io: (e: unknown) => CabError): Promise<Direct> {
    try {
      return new Direct(file, await fs.open(file, constants.O_WRONLY), io);
    } catch (e) {
      throw io(e);
    }
  }
  async write(bytes: Uint8Array): Promise<void> {
    try {
      await writeAll(this.fh, bytes, null);
    } catch (e) {
      throw this.io(e);
    }
    this.size += bytes.length;
  }
  async commit(): Promise<void> {
    try {
      // A block device keeps what it is given: make it durable. Pipes and character devices have nothing to sync.
      if ((await this.fh.stat()).isBlockDevice()) await this.fh.sync();
      this.#open = false;
      await this.fh.close();
    } catch (e) {
      throw this.io(e);
    }
  }
  async abort(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    await this.fh.close().catch(() => {});
  }
}
