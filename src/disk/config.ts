import fs from 'node:fs/promises';
import { CabError } from '../errors.js';
import { resolveChunkerParams, sameChunkerParams, type ChunkerParams } from '../chunker/params.js';
import { HASH_NAME } from '../hash/sha256.js';
import { FORMAT_VERSION, type Layout } from '../format/layout.js';
import { writeFileDurable } from './durable.js';

/** cabstore.json: what a store is, fixed when it is created. */
export interface StoreConfig {
  format: number;
  hash: string;
  chunker: ChunkerParams;
}

/**
 * Reads cabstore.json, creating it (durably) for a new store with the
 * chunker parameters asked for. An existing store keeps its own parameters:
 * asking for others is ERR_BAD_CHUNKER_PARAMS; a newer format,
 * ERR_FORMAT_VERSION.
 */
export async function loadConfig(layout: Layout, chunker?: Partial<ChunkerParams>): Promise<StoreConfig> {
  let text: string | undefined;
  try {
    text = await fs.readFile(layout.config, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (text === undefined) {
    const p = resolveChunkerParams(chunker);
    const config: StoreConfig = { format: FORMAT_VERSION, hash: HASH_NAME, chunker: { min: p.min, avg: p.avg, max: p.max } };
    try {
      await writeFileDurable(layout.config, JSON.stringify(config, null, 2) + '\n');
    } catch (e) {
      // Another process created it first: read theirs.
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    return loadConfig(layout, chunker);
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
