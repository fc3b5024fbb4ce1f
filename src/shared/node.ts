import fs from 'node:fs/promises';
import { CabError, isCabError } from '../errors.js';
import { readDescriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import { NodeLease } from '../bucket/node-lease.js';
import type { OpenedBucket } from '../disk/bucket-config.js';
import type { Cas } from '../disk/cas.js';
import { leaseLives, type Lease } from '../disk/lease.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import { importBlob, isPublished, publishBlob, syncBlobs, type SyncContext, type SyncReport } from './sync.js';

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
    this.lease = new NodeLease(bucket.os, bucket.keys, bucket.node, host.lease.name, bucket.options.gcDelay);
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
    await n.lease.readDoomed();
    n.lease.start();
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
      if (this.#host.index.blob(name)?.h && (await isPublished(this.#host.layout, name))) continue;
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
      throw e;
    }
    if (now) await this.lease.hold(name, frags);
    else this.lease.holdLater(name, frags);
  }

  /** A blob deleted here: no hold. */
  forget(name: string): void {
    this.lease.unhold(name);
  }

  /**
   * A new reference to the fragments of blob `name` was pinned in a lease
   * published at `pinnedAt`: ERR_NO_SUCH_BLOB if one of them is doomed and
   * the blob is gone from the bucket (deleted elsewhere, so GC may delete
   * them): the caller must not rely on them.
   */
  async confirm(name: string, frags: readonly string[], pinnedAt: number): Promise<void> {
    if (!(await this.lease.doomed(frags, pinnedAt))) return;
    if (await this.bucket.os.head(this.bucket.keys.descriptor(name))) return;
    throw new CabError('ERR_NO_SUCH_BLOB', `blob ${name} was deleted from the bucket`, { blob: name });
  }

  /** A published blob's descriptor was replaced here (healed): the bucket's is replaced too (a plain PUT: its name is taken). */
  async replaced(name: string): Promise<void> {
    if (!(await isPublished(this.#host.layout, name))) return;
    await this.bucket.os.put(this.bucket.keys.descriptor(name), await fs.readFile(this.#host.layout.descriptor(name)));
  }

  /** A blob asked for by name that is not here: fetched if the bucket has it. */
  fetch(name: string): Promise<boolean> {
    return importBlob(this.#ctx, name);
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
