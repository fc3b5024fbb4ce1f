import fs from 'node:fs/promises';

/** Fan-out directory listings read ahead while the walk yields from the one before. */
const READ_AHEAD = 16;

async function list(dir: string) {
  try {
    return await fs.readdir(dir, { withFileTypes: true });
  } catch (e) {
    // A fan-out directory removed meanwhile (or never made) holds nothing.
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return [];
    throw e;
  }
}

/**
 * Names of the files `depth` fan-out levels (two hex characters each) below
 * `dir`, lazily, in no particular order. Directories of one level are read a
 * few at a time (readdir of a fan-out directory is small; waiting on each in
 * turn is what is slow), so at most READ_AHEAD listings are held.
 */
export async function* walk(dir: string, depth: number): AsyncGenerator<string> {
  if (depth === 0) {
    for (const ent of await list(dir)) if (ent.isFile()) yield ent.name;
    return;
  }
  const subdirs = (await list(dir)).filter((e) => e.isDirectory() && /^[0-9a-f]{2}$/.test(e.name)).map((e) => `${dir}/${e.name}`);
  if (depth > 1) {
    for (const sub of subdirs) yield* walk(sub, depth - 1);
    return;
  }
  const start = (d: string) => {
    const p = list(d);
    p.catch(() => {}); // awaited in turn; an abandoned walk must not leave an unhandled rejection
    return p;
  };
  const pending = subdirs.slice(0, READ_AHEAD).map(start);
  for (let i = 0; i < subdirs.length; i++) {
    const ents = await pending[i]!;
    if (i + READ_AHEAD < subdirs.length) pending.push(start(subdirs[i + READ_AHEAD]!));
    pending[i] = Promise.resolve([]);
    for (const ent of ents) if (ent.isFile()) yield ent.name;
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
  for (const ent of await list(tmp)) (ent.isFile() && /^[1-9][0-9]*-/.test(ent.name) ? own : stray).push(ent.name);
  return { own, stray };
}
