import fs from 'node:fs/promises';
import path from 'node:path';
import { CabError } from '../errors.js';
import { resolveChunkerParams, resolveStoreChunkerParams, sameChunkerParams, type ChunkerParams } from '../chunker/params.js';
import { HASH_NAME } from '../hash/sha256.js';
import { FORMAT_VERSION, type Layout } from '../format/layout.js';
import { ensureDir, exists, writeFileDurable } from './durable.js';
import { resolveObjectStoreOptions } from '../bucket/options.js';

/** cabstore.json: what a store is, fixed when it is created. */
export interface StoreConfig {
  format: number;
  hash: string;
  chunker: ChunkerParams;
  /** A bucket-backed store's bucket (see disk/bucket-config.ts), recorded when the store is first opened on it. */
  objectStore?: Attachment;
}

/** The bucket a store keeps its fragments in, and the name of this folder among the stores on it. */
export interface Attachment {
  endpoint: string;
  bucket: string;
  prefix: string;
  region: string;
  /** 16 hex: this folder's name in the bucket's nodes/. */
  node: string;
  /** The inode of the folder the node is for (decimal): a copy of the folder has another, and takes a node of its own. */
  folder?: string;
}

/**
 * Why a directory is not a store, in ERR_BAD_STORE's `data.reason`:
 * 'absent' (no directory, or an empty one, and not asked to create a
 * store), 'not-empty' (other files and no cabstore.json: never made a
 * store, or a store that lost its cabstore.json), 'not-a-directory' (a
 * file where the store or a directory above it should be, or a symbolic
 * link to nothing).
 */
export type NotAStore = 'absent' | 'not-empty' | 'not-a-directory';

/**
 * Reads cabstore.json: a directory is a store when it holds one. With
 * `create`, a new or empty directory becomes a store: cabstore.json is
 * written (durably) with the chunker parameters asked for. A directory that
 * holds other files is never made a store. An existing store keeps its own
 * parameters: asking for others is ERR_BAD_CHUNKER_PARAMS; a newer format,
 * ERR_FORMAT_VERSION.
 */
export async function loadConfig(layout: Layout, chunker: Partial<ChunkerParams> | undefined, create: boolean): Promise<StoreConfig> {
  let text: string | undefined;
  try {
    text = await fs.readFile(layout.config, 'utf8');
  } catch (e) {
    // ENOTDIR: the root, or a directory above it, is a file (mayBecomeStore says which reason).
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw e;
  }
  if (text === undefined) {
    // Why this is not a store (not a directory, other files) comes before whether one may be made.
    if (!(await mayBecomeStore(layout))) return loadConfig(layout, chunker, create); // another process made it meanwhile
    if (!create) throw notAStore(layout, 'absent', `no cabstore store at ${layout.root}`);
    await ensureDir(layout.root, new Set());
    if (!(await mayBecomeStore(layout))) return loadConfig(layout, chunker, create);
    const p = resolveStoreChunkerParams(chunker);
    const config: StoreConfig = { format: FORMAT_VERSION, hash: HASH_NAME, chunker: { min: p.min, avg: p.avg, max: p.max } };
    try {
      await writeFileDurable(layout.config, JSON.stringify(config, null, 2) + '\n');
    } catch (e) {
      // Another process created it first: read theirs.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    return loadConfig(layout, chunker, create);
  }
  let config: StoreConfig;
  try {
    config = JSON.parse(text) as StoreConfig;
  } catch (e) {
    throw new CabError('ERR_BAD_STORE', `${layout.config} is not JSON`, { path: layout.config }, { cause: e });
  }
  if (typeof config !== 'object' || config === null || !Number.isSafeInteger(config.format)) {
    throw new CabError('ERR_BAD_STORE', `${layout.config} has no format version`, { path: layout.config });
  }
  if (config.format > FORMAT_VERSION) {
    throw new CabError('ERR_FORMAT_VERSION', `store format ${config.format} is newer than this cabstore reads (${FORMAT_VERSION})`, {
      expected: FORMAT_VERSION,
      found: config.format,
    });
  }
  if (config.hash !== HASH_NAME) throw new CabError('ERR_BAD_STORE', `store hash ${config.hash} is not ${HASH_NAME}`, { found: config.hash });
  const stored = resolveChunkerParams(config.chunker);
  if (chunker && !sameChunkerParams(stored, resolveChunkerParams(chunker))) {
    throw new CabError('ERR_BAD_CHUNKER_PARAMS', `the store chunks with min ${stored.min}, avg ${stored.avg}, max ${stored.max}`, {
      expected: config.chunker,
      found: chunker,
    });
  }
  return config;
}

function notAStore(layout: Layout, reason: NotAStore, msg: string): CabError {
  return new CabError('ERR_BAD_STORE', msg, { path: layout.root, reason });
}

/**
 * Whether the root, which has no cabstore.json, may become a store: true if
 * it does not exist or is empty but for the temp files of a cabstore.json
 * being written (a process creating the same store at the same time, or one
 * that died doing so); false if cabstore.json has appeared meanwhile.
 * Anything else is ERR_BAD_STORE: a directory of other files is never
 * turned into a store.
 */
async function mayBecomeStore(layout: Layout): Promise<boolean> {
  let entries: string[];
  try {
    entries = await fs.readdir(layout.root);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      // A link to nothing: no store could be made through it (mkdir meets the link), nor is one there.
      const target = await fs.readlink(layout.root).catch(() => undefined);
      if (target === undefined) return true;
      throw notAStore(layout, 'not-a-directory', `${layout.root} is a symbolic link to ${target}, which does not exist: make that directory, or point the link at a store`);
    }
    if (code !== 'ENOTDIR') throw e;
    throw notAStore(layout, 'not-a-directory', `${layout.root} is not a directory (it, or a directory above it, is a file)`);
  }
  const config = path.basename(layout.config);
  if (entries.includes(config)) {
    // Made meanwhile, so read it again; unless it is a link to nothing, which reads as absent for ever.
    if (await exists(layout.config)) return false;
    throw new CabError('ERR_BAD_STORE', `${layout.config} cannot be read (a link to nothing?)`, { path: layout.config });
  }
  const others = entries.filter((f) => !(f.startsWith(`${config}.`) && f.endsWith('.tmp')));
  if (others.length === 0) return true;
  // A store's own directories and no cabstore.json: a store that lost it, not a folder to make one in.
  const own = [layout.blobRoot, layout.casRoot, layout.index].map((d) => path.basename(d));
  if (own.every((d) => entries.includes(d))) {
    throw notAStore(
      layout,
      'not-empty',
      `${layout.root} looks like a cabstore store (${own.join(', ')}) that lost its ${config}: restore ${config} (from a backup, or written by a store made with the same chunker parameters), then run fsck`,
    );
  }
  throw notAStore(layout, 'not-empty', `${layout.root} holds other files (${others.slice(0, 3).join(', ')}${others.length > 3 ? ', ...' : ''}) and no cabstore store: a store is made only in a new or empty directory`);
}

/** BlobStore.open's arguments: a bad one is ERR_BAD_ARGUMENT, before anything is looked at or made. */
export function checkOpenArgs(root: unknown, options: unknown): void {
  const bad = (why: string) => new CabError('ERR_BAD_ARGUMENT', `BlobStore.open: ${why}`);
  if (typeof root !== 'string' || root.length === 0) throw bad('the store directory must be a non-empty string');
  if (options === null || typeof options !== 'object') throw bad('options must be an object');
  const o = options as Record<string, unknown>;
  for (const k of ['create', 'catchUpIndex'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'boolean') throw bad(`${k} must be true or false, not ${JSON.stringify(o[k])}`);
  }
  if (o.fragmentSize !== undefined && (!Number.isSafeInteger(o.fragmentSize) || (o.fragmentSize as number) < 1)) throw bad(`fragmentSize must be a positive integer, not ${String(o.fragmentSize)}`);
  if (o.chunker !== undefined && (o.chunker === null || typeof o.chunker !== 'object')) throw bad('chunker must be an object of min, avg and max');
  if (o.chunker !== undefined) resolveStoreChunkerParams(o.chunker as Partial<ChunkerParams>); // ERR_BAD_CHUNKER_PARAMS before a directory is made
  if (o.objectStore !== undefined) resolveObjectStoreOptions(o.objectStore);
}

/** The bucket recorded in cabstore.json, if there is a cabstore.json and it records one (loadConfig checks the rest). */
export async function recordedAttachment(layout: Layout): Promise<Attachment | undefined> {
  let text: string;
  try {
    text = await fs.readFile(layout.config, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw e;
  }
  let a: unknown;
  try {
    a = (JSON.parse(text) as StoreConfig | null)?.objectStore;
  } catch {
    return undefined; // not JSON: loadConfig says so
  }
  if (a === undefined) return undefined;
  const x = a as Record<string, unknown>;
  if (!['endpoint', 'bucket', 'prefix', 'region', 'node'].every((k) => typeof x[k] === 'string') || !/^[0-9a-f]{16}$/.test(x.node as string) || !['undefined', 'string'].includes(typeof x.folder)) {
    throw new CabError('ERR_BAD_STORE', `${layout.config}: objectStore is malformed`, { path: layout.config });
  }
  return a as Attachment;
}
