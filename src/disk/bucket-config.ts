import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { CabError } from '../errors.js';
import { resolveChunkerParams, sameChunkerParams, type ChunkerParams } from '../chunker/params.js';
import { HASH_NAME } from '../hash/sha256.js';
import { FORMAT_VERSION, isFragmentId, type Layout } from '../format/layout.js';
import { BucketLayout } from '../bucket/keys.js';
import { ObjectStore } from '../bucket/object-store.js';
import { resolveObjectStoreOptions, type ObjectStoreOptions, type ResolvedObjectStoreOptions } from '../bucket/options.js';
import { loadConfig, recordedAttachment, type StoreConfig } from './config.js';
import { writeFileDurable } from './durable.js';
import { walk } from './walk.js';

/** A bucket a store is opened on. */
export interface OpenedBucket {
  os: ObjectStore;
  keys: BucketLayout;
  /** This folder's name among the stores on the bucket. */
  node: string;
  options: ResolvedObjectStoreOptions;
}

/**
 * Reads (or makes) the store's cabstore.json, and for a bucket-backed store
 * (asked for now, or recorded in cabstore.json when it was first opened on
 * the bucket) connects to the bucket and checks the two agree:
 *
 * - the bucket's cabstore.json (written once, by the first store on it)
 *   fixes the chunker: a new store takes its parameters, an existing store
 *   or an explicit `chunker` that differs is ERR_BAD_CHUNKER_PARAMS;
 * - a store stays on the bucket and prefix it was first opened on
 *   (another is ERR_BAD_ARGUMENT); the endpoint may change;
 * - a store that held fragments before it was first opened on a bucket has
 *   them uploaded first (its descriptors are published by the first sync).
 */
export async function openConfig(
  layout: Layout,
  asked: ObjectStoreOptions | undefined,
  chunker: Partial<ChunkerParams> | undefined,
  create: boolean,
): Promise<{ config: StoreConfig; bucket?: OpenedBucket }> {
  const recorded = await recordedAttachment(layout);
  if (!asked && !recorded) return { config: await loadConfig(layout, chunker, create) };
  // A store that may not be made here must exist before the bucket is asked anything (ERR_BAD_STORE 'absent').
  if (!create && !recorded) await loadConfig(layout, undefined, false);
  const o = resolveObjectStoreOptions(asked ?? { endpoint: recorded!.endpoint, bucket: recorded!.bucket, prefix: recorded!.prefix, region: recorded!.region });
  if (recorded && (recorded.bucket !== o.bucket || recorded.prefix !== o.prefix)) {
    throw new CabError('ERR_BAD_ARGUMENT', `the store at ${layout.root} keeps its fragments in s3://${recorded.bucket}/${recorded.prefix}, not s3://${o.bucket}/${o.prefix}`, {
      expected: `s3://${recorded.bucket}/${recorded.prefix}`,
      found: `s3://${o.bucket}/${o.prefix}`,
    });
  }
  const os = await ObjectStore.connect(o);
  os.multipartThreshold = o.multipartThreshold;
  try {
    // A store already on the bucket never makes it, nor its cabstore.json: without them this is not the
    // bucket it was on (another endpoint's bucket of that name, or one emptied), and its first sync would
    // read every blob published here as deleted elsewhere, and remove it.
    await os.ensureBucket(create && !recorded);
    const keys = new BucketLayout(o.prefix);
    let shared = await bucketConfig(os, keys);
    if (!shared && recorded) {
      throw new CabError('ERR_OBJECT_STORE', `s3://${o.bucket}/${keys.config} at ${o.endpoint} is absent, and this store was opened on it: not the bucket it was on, or emptied (this folder is left as it is)`, {
        bucket: o.bucket,
        key: keys.config,
        s3Code: 'NoSuchKey',
        status: 404,
      });
    }
    if (shared && chunker && !sameChunkerParams(resolveChunkerParams(shared.chunker), resolveChunkerParams(chunker))) throw otherChunker(shared, chunker);
    const config = await loadConfig(layout, chunker ?? shared?.chunker, create);
    if (!shared) {
      const body = { format: config.format, hash: config.hash, chunker: config.chunker } satisfies StoreConfig;
      if ((await os.putIfAbsent(keys.config, Buffer.from(JSON.stringify(body, null, 2) + '\n'))) === 'exists') shared = await bucketConfig(os, keys);
    }
    if (shared && !sameChunkerParams(resolveChunkerParams(shared.chunker), resolveChunkerParams(config.chunker))) throw otherChunker(shared, config.chunker);
    // The folder's node is its own: a copy of the folder (or the folder moved to another file system,
    // restored) carries the node of the folder it came from, and would drop that folder's leases as its
    // own dead processes' (shared/node.ts). So the node goes with the folder's inode: another inode, another node.
    const folder = String((await fs.stat(layout.root)).ino);
    let node = recorded?.node;
    if (!node || recorded!.folder !== folder) {
      if (!node) await uploadAll(layout, os, keys);
      // One recorded before the inode was: it is this folder's (no copy can be told from it).
      else if (recorded!.folder !== undefined) node = undefined;
      node ??= crypto.randomBytes(8).toString('hex');
      const objectStore = { endpoint: o.endpoint, bucket: o.bucket, prefix: o.prefix, region: o.region, node, folder };
      await writeFileDurable(layout.config, JSON.stringify({ ...config, objectStore }, null, 2) + '\n');
    }
    return { config, bucket: { os, keys, node, options: o } };
  } catch (e) {
    os.close();
    throw e;
  }
}

function otherChunker(shared: StoreConfig, found: Partial<ChunkerParams>): CabError {
  const p = shared.chunker;
  return new CabError('ERR_BAD_CHUNKER_PARAMS', `the stores on this bucket chunk with min ${p.min}, avg ${p.avg}, max ${p.max}`, { expected: p, found });
}

/** The bucket's cabstore.json, checked; undefined if there is none yet. */
async function bucketConfig(os: ObjectStore, keys: BucketLayout): Promise<StoreConfig | undefined> {
  const body = await os.get(keys.config);
  if (!body) return undefined;
  let c: StoreConfig;
  try {
    c = JSON.parse(body.toString('utf8')) as StoreConfig;
  } catch (e) {
    throw new CabError('ERR_BAD_STORE', `${keys.config} in bucket ${os.bucket} is not JSON`, { key: keys.config }, { cause: e });
  }
  if (typeof c !== 'object' || c === null || !Number.isSafeInteger(c.format)) throw new CabError('ERR_BAD_STORE', `${keys.config} in bucket ${os.bucket} has no format version`, { key: keys.config });
  if (c.format > FORMAT_VERSION) throw new CabError('ERR_FORMAT_VERSION', `the bucket's store format ${c.format} is newer than this cabstore reads (${FORMAT_VERSION})`, { expected: FORMAT_VERSION, found: c.format });
  if (c.hash !== HASH_NAME) throw new CabError('ERR_BAD_STORE', `the bucket's hash ${c.hash} is not ${HASH_NAME}`, { found: c.hash });
  resolveChunkerParams(c.chunker);
  return c;
}

/** Every fragment in cas/ into the bucket (a store that kept them only on disk until now). */
async function uploadAll(layout: Layout, os: ObjectStore, keys: BucketLayout): Promise<void> {
  for await (const id of walk(layout.casRoot, 2)) {
    if (!isFragmentId(id)) continue;
    const file = layout.fragment(id);
    await os.putIfAbsent(keys.fragment(id), { file, size: (await fs.stat(file)).size });
  }
}
