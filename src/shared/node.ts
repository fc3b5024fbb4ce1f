import fs from 'node:fs/promises';
import { CabError, isCabError } from '../errors.js';
import { readDescriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import { NodeLease } from '../bucket/node-lease.js';
import type { OpenedBucket } from '../disk/bucket-config.js';
import type { Cas } from '../disk/cas.js';
import { leaseLives, type Lease } from '../disk/lease.js';
import { writeFileDurable } from '../disk/durable.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import type { BucketGcReport } from '../bucket/report.js';
import { collectBucket } from './gc.js';
import { fetchBlob, publishBlob, readMark, syncBlobs, type SyncContext, type SyncReport } from './sync.js';

/** What a shared node needs from its store. */
export interface SharedHost {
  readonly layout: Layout;
  readonly index: ChunkIndex;
  readonly lease: Lease;
  readonly cas: Cas;
  readonly knownDirs: Set<string>;
  listBlobIds(): AsyncIterable<string>;
  /** Removes a blob from this folder only. */
  removeLocal(name: string): Promise<void>;
}

/**
 * A bucket-backed store's part in the bucket it shares with other stores
 * (docs/FORMAT.md, "In an object store"): its lease there, the publishing
 * of finalized blobs, the fetching of blobs the others publish, and the
 * removal of those they delete. It learns of the others' blobs on open,
 * every `syncInterval` ms in the background, on `sync()`, and when a blob
 * asked for by name is not here (`fetch`): a listing may be that old, a
 * read by name never is.
 */
export class SharedNode {
  readonly bucket: OpenedBucket;
  readonly lease: NodeLease;
  readonly #host: SharedHost;
  readonly #ctx: SyncContext;
  #timer: NodeJS.Timeout | undefined;
  #syncing: Promise<SyncReport> | undefined;
  #closed = false;

  private constructor(host: SharedHost, bucket: OpenedBucket) {
    this.#host = host;
    this.bucket = bucket;
    this.lease = new NodeLease(bucket.os, bucket.keys, bucket.node, host.lease.name);
    this.#ctx = { layout: host.layout, index: host.index, knownDirs: host.knownDirs, os: bucket.os, keys: bucket.keys, lease: this.lease, removeLocal: (n) => host.removeLocal(n) };
  }

  /**
   * Takes this process's lease in the bucket, holding the fragments of
   * every blob of this folder that is unfinalized or not yet published;
   * then drops the leases of this folder's processes that are gone (this
   * one holds what they held), reads the doomed lists, and syncs.
   */
  static async start(host: SharedHost, bucket: OpenedBucket): Promise<SharedNode> {
    const n = new SharedNode(host, bucket);
    host.lease.attach(n.lease);
    await n.#holdAll();
    await n.lease.publish();
    await n.dropDeadLeases();
    await n.sync();
    const every = bucket.options.syncInterval;
    if (every > 0) {
      n.#timer = setInterval(() => n.sync().catch(() => {}), every);
      n.#timer.unref();
    }
    return n;
  }

  /** Holds the fragments of this folder's unfinalized and unpublished blobs in the lease. */
  async #holdAll(): Promise<void> {
    for await (const name of this.#host.listBlobIds()) {
      if (this.#host.index.blob(name)?.h && (await readMark(this.#host.layout, name)) !== undefined) continue;
      await this.keep(name, false);
    }
  }

  /** Deletes the bucket leases of this folder's processes that no longer have it open. */
  async dropDeadLeases(): Promise<void> {
    const { os, keys, node } = this.bucket;
    const dead: string[] = [];
    for await (const o of os.list(keys.lease(node, ''))) {
      const l = keys.leaseOf(o.key);
      if (!l || o.key === this.lease.key) continue;
      if (!(await leaseLives(this.#host.layout, l[1]))) dead.push(o.key);
    }
    await os.deleteMany(dead);
  }

  /** Publishes a blob just finalized here (a writer's close). */
  publish(name: string): Promise<void> {
    return publishBlob(this.#ctx, name);
  }

  /**
   * Keeps the fragments of blob `name` (unfinalized, or finalized and not
   * published) held in the lease, so that they stay while no writer has
   * it open. With `now`, the lease is published before this resolves.
   */
  async keep(name: string, now = true): Promise<void> {
    let frags: readonly string[];
    try {
      frags = (await readDescriptor(this.#host.layout.descriptor(name), name)).extents.fragments();
    } catch (e) {
      if (isCabError(e, 'ERR_NO_SUCH_BLOB')) return;
      if (!isCabError(e, 'ERR_DESCRIPTOR_CORRUPT')) throw e;
      // Held as corrupt: the store opens (as one on disk does: only that blob fails), and GC on the bucket stops until it is mended or deleted.
      this.lease.holdCorrupt(name);
      if (now) await this.lease.publish();
      return;
    }
    if (now) await this.lease.hold(name, frags);
    else this.lease.holdLater(name, frags);
  }

  /**
   * GC of the bucket (shared/gc.ts), after this process's lease holds every
   * unfinalized or unpublished blob of its folder again and the leases of
   * the folder's dead processes are gone.
   */
  async gc(options: { dryRun?: boolean; signal?: AbortSignal }): Promise<BucketGcReport> {
    await this.#holdAll();
    await this.lease.publish();
    if (!options.dryRun) await this.dropDeadLeases();
    const { os, keys, options: o } = this.bucket;
    return collectBucket({ os, keys, gcGrace: o.gcGrace, dryRun: !!options.dryRun, ...(options.signal ? { signal: options.signal } : {}) });
  }

  /** A blob deleted here: no hold (one held as corrupt goes at once, for GC to run again; if that fails, with the next publish). */
  async forget(name: string): Promise<void> {
    if (this.lease.unhold(name)) await this.lease.publish().catch(() => {});
  }

  /**
   * A new reference to the fragments of blob `name` has just been pinned
   * (the pin is in the bucket lease): confirms that the bucket still
   * publishes the descriptor they came from, as this folder has it (its
   * tag, after the pin). Else ERR_NO_SUCH_BLOB (deleted elsewhere, or
   * healed elsewhere: `data.changed`), and the caller must not rely on
   * them: GC may have found them unreferenced before the pin (FORMAT.md,
   * "GC across stores"). A blob not published (unfinalized here, or not
   * yet published) needs no look: this folder's leases hold its fragments.
   */
  async confirm(name: string): Promise<void> {
    const tag = await readMark(this.#host.layout, name);
    if (tag === undefined) return;
    const now = await this.bucket.os.head(this.bucket.keys.descriptor(name));
    if (now?.etag === tag) return;
    throw new CabError('ERR_NO_SUCH_BLOB', `blob ${name} was ${now ? 'changed' : 'deleted'} in the bucket by another store`, { blob: name, changed: now !== undefined });
  }

  /**
   * A published blob's descriptor was replaced here (healed): the bucket's
   * is replaced too (a plain PUT: its name is taken), and the mark takes
   * the new tag. Other stores see the tag change (confirm, sync) and fetch it.
   */
  async replaced(name: string): Promise<void> {
    if ((await readMark(this.#host.layout, name)) === undefined) return;
    const etag = await this.bucket.os.put(this.bucket.keys.descriptor(name), await fs.readFile(this.#host.layout.descriptor(name)));
    await writeFileDurable(this.#host.layout.publishedMark(name), etag);
  }

  /** A blob asked for by name that is not here, or not as the bucket has it: fetched if the bucket has it. */
  fetch(name: string): Promise<boolean> {
    return fetchBlob(this.#ctx, name);
  }

  /** Deletes a blob's published descriptor (before it goes here: see FORMAT.md). */
  async unpublish(name: string): Promise<void> {
    await this.bucket.os.deleteMany([this.bucket.keys.descriptor(name)]);
  }

  /** Looks for blobs published or deleted by other stores now (one sync at a time; a call during one waits for it). */
  sync(): Promise<SyncReport> {
    if (this.#closed) return Promise.reject(new CabError('ERR_CLOSED', 'the store is closed'));
    this.#syncing ??= syncBlobs(this.#ctx).finally(() => (this.#syncing = undefined));
    return this.#syncing;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#syncing?.catch(() => {});
    try {
      await this.lease.close();
    } finally {
      this.bucket.os.close();
    }
  }
}
