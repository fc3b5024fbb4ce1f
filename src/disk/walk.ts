import fs from 'node:fs/promises';
import { CabError, ioError } from '../errors.js';

/** Fan-out directory listings read ahead while the walk yields from the one before. */
const READ_AHEAD = 16;

export interface WalkOptions {
  /**
   * For blob/: every entry at the bottom is yielded, whatever it is (a file,
   * a link, a directory, a FIFO), for whoever opens it to read or to fail
   * on with ERR_IO (format/descriptor.ts, openDescriptor), and a fan-out
   * folder that is a link to nothing (a disk not mounted) is ERR_IO. So
   * GC never takes a blob it cannot read for absent. Without it: only
   * files, and such a folder holds nothing.
   */
  everyEntry?: boolean;
}

async function list(dir: string, everyEntry: boolean) {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw ioError(e, `listing ${dir}`, { path: dir });
    // A fan-out directory removed meanwhile (or never made, or a link to a file) holds nothing; a link to nothing may hide anything.
    if (everyEntry && code === 'ENOENT' && (await isLink(dir))) {
      throw new CabError('ERR_IO', `listing ${dir}: it is a link to nothing (a disk not mounted?), and the blobs in it cannot be listed`, { path: dir, found: code });
    }
    return [];
  }
}

async function isLink(p: string): Promise<boolean> {
  try {
    return (await fs.lstat(p)).isSymbolicLink();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw ioError(e, `looking at ${p}`, { path: p });
  }
}

/**
 * Names of the files `depth` fan-out levels (two hex characters each) below
 * `dir`, lazily, in no particular order. A fan-out folder that is a link is
 * followed (an operator may move one to another disk and link it back:
 * readers read through it, so GC must see what is in it). Directories of
 * one level are read a few at a time (readdir of a fan-out directory is
 * small; waiting on each in turn is what is slow), so at most READ_AHEAD
 * listings are held.
 */
export async function* walk(dir: string, depth: number, options: WalkOptions = {}): AsyncGenerator<string> {
  const every = !!options.everyEntry;
  const leaf = (e: { isFile(): boolean }) => every || e.isFile();
  if (depth === 0) {
    for (const ent of await list(dir, every)) if (leaf(ent)) yield ent.name;
    return;
  }
  const subdirs = (await list(dir, every)).filter((e) => (e.isDirectory() || e.isSymbolicLink()) && /^[0-9a-f]{2}$/.test(e.name)).map((e) => `${dir}/${e.name}`);
  if (depth > 1) {
    for (const sub of subdirs) yield* walk(sub, depth - 1, options);
    return;
  }
  const start = (d: string) => {
    const p = list(d, every);
    p.catch(() => {}); // awaited in turn; an abandoned walk must not leave an unhandled rejection
    return p;
  };
  const pending = subdirs.slice(0, READ_AHEAD).map(start);
  for (let i = 0; i < subdirs.length; i++) {
    const ents = await pending[i]!;
    if (i + READ_AHEAD < subdirs.length) pending.push(start(subdirs[i + READ_AHEAD]!));
    pending[i] = Promise.resolve([]);
    for (const ent of ents) if (leaf(ent)) yield ent.name;
  }
}

/**
 * The entries of a store's tmp/ folder: `own`, the files cabstore makes
 * there (a pid, a dash, then anything), and `stray`, everything else (a
 * folder, a link, a name of no process), which gc leaves alone and fsck
 * reports.
 */
export async function tempEntries(tmp: string): Promise<{ own: string[]; stray: string[] }> {
  const own: string[] = [];
  const stray: string[] = [];
  for (const ent of await list(tmp, false)) (ent.isFile() && /^[1-9][0-9]*-/.test(ent.name) ? own : stray).push(ent.name);
  return { own, stray };
}
