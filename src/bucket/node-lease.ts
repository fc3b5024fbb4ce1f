import os from 'node:os';
import { CabError } from '../errors.js';
import { isBlobName, isFragmentId } from '../format/layout.js';
import type { BucketLayout } from './keys.js';
import type { ObjectStore } from './object-store.js';

/** A lease object as GC reads it: nodes/<node>/<lease>. */
export interface BucketLeaseBody {
  v: 1;
  node: string;
  lease: string;
  host: string;
  pid: number;
  /** Fragments GC must not delete. */
  fragments: string[];
  /**
   * Blobs of its folder it must hold and cannot read: their descriptors are
   * corrupt there, and their records may name any fragment. While one is
   * listed, every GC on the bucket stops before deleting anything (as for a
   * corrupt published descriptor). Absent when there are none.
   */
  corrupt?: string[];
}

/**
 * One process's lease in the bucket (docs/FORMAT.md, "GC across stores"):
 * every fragment the process needs kept. Those its readers and writers pin
 * (as its local lease does, pushed here by disk/lease.ts), and those of
 * its folder's unfinalized and not yet published blobs ("held": they need
 * keeping even while no writer has them open). A lease counts for GC
 * until it is deleted: by its process on close when it holds nothing, or
 * by the next process on the same folder, which holds what it held.
 */
export class NodeLease {
  readonly key: string;
  readonly #os: ObjectStore;
  readonly #body: Omit<BucketLeaseBody, 'fragments'>;
  #pinned: string[] = [];
  readonly #held = new Map<string, readonly string[]>();
  /** Blobs of #held's kind whose descriptors cannot be read (BucketLeaseBody.corrupt). */
  readonly #corrupt = new Set<string>();
  /** Publishing: a generation counter so that many changes while one PUT is in flight make one more. */
  #wanted = 0;
  #done = 0;
  #putting: Promise<void> | undefined;
  #lastPut = '';
  #closed = false;

  constructor(store: ObjectStore, keys: BucketLayout, node: string, lease: string) {
    this.#os = store;
    this.key = keys.lease(node, lease);
    this.#body = { v: 1, node, lease, host: os.hostname(), pid: process.pid };
  }

  /** The pins of this process's readers and writers (its local lease's), published once this resolves. */
  pins(fragments: Iterable<string>): Promise<void> {
    this.#pinned = [...fragments];
    return this.publish();
  }

  /** Fragments of blob `name` that must stay while it is unfinalized or unpublished here; in the bucket once the returned promise resolves. */
  hold(name: string, fragments: readonly string[]): Promise<void> {
    this.#held.set(name, fragments);
    return this.publish();
  }

  /** As hold, for the next publish. */
  holdLater(name: string, fragments: readonly string[]): void {
    this.#held.set(name, fragments);
  }

  /** A blob to hold whose descriptor is corrupt (BucketLeaseBody.corrupt), for the next publish. */
  holdCorrupt(name: string): void {
    this.#corrupt.add(name);
  }

  /** The blob is published (or deleted): its hold goes with the next publish. True if it was held as corrupt. */
  unhold(name: string): boolean {
    this.#held.delete(name);
    return this.#corrupt.delete(name);
  }

  get holds(): number {
    return this.#held.size + this.#corrupt.size;
  }

  /** Writes the lease as it is now; resolves once a PUT that began after this call has succeeded. */
  publish(): Promise<void> {
    const gen = ++this.#wanted;
    const loop = async (): Promise<void> => {
      while (this.#done < this.#wanted) {
        const target = this.#wanted;
        const frags = new Set(this.#pinned);
        for (const f of this.#held.values()) for (const x of f) frags.add(x);
        const corrupt = this.#corrupt.size > 0 ? { corrupt: [...this.#corrupt].sort() } : {};
        const body = JSON.stringify({ ...this.#body, fragments: [...frags].sort(), ...corrupt } satisfies BucketLeaseBody);
        if (body !== this.#lastPut) {
          await this.#os.put(this.key, Buffer.from(body));
          this.#lastPut = body;
        }
        this.#done = target;
      }
    };
    const wait = async (): Promise<void> => {
      while (this.#done < gen) {
        this.#putting ??= loop().finally(() => (this.#putting = undefined));
        await this.#putting;
      }
    };
    return wait();
  }

  /** Deletes the lease if it holds nothing (else the next process on the folder does). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#putting?.catch(() => {});
    if (this.holds === 0) await this.#os.deleteMany([this.key]);
    else await this.pins([]);
  }
}

/** A lease object's body, checked: a lease GC cannot read stops it (nothing is deleted). */
export function parseLease(key: string, body: Buffer): BucketLeaseBody {
  let l: BucketLeaseBody;
  try {
    l = JSON.parse(body.toString('utf8')) as BucketLeaseBody;
  } catch (e) {
    throw new CabError('ERR_OBJECT_STORE', `the lease ${key} is not JSON (GC stopped, nothing deleted)`, { key }, { cause: e });
  }
  const ids = (x: unknown, ok: (s: string) => boolean) => Array.isArray(x) && x.every((f) => typeof f === 'string' && ok(f));
  if (l?.v !== 1 || !ids(l.fragments, isFragmentId) || (l.corrupt !== undefined && !ids(l.corrupt, isBlobName))) {
    throw new CabError('ERR_OBJECT_STORE', `the lease ${key} is malformed (GC stopped, nothing deleted)`, { key });
  }
  if (l.corrupt?.length) {
    throw new CabError('ERR_DESCRIPTOR_CORRUPT', `gc stopped before deleting anything: the lease ${key} holds blob ${l.corrupt[0]}, whose descriptor in its folder (node ${l.node}, host ${l.host}) is corrupt and may name any fragment; mend or delete it there`, {
      key,
      blob: l.corrupt[0],
    });
  }
  return l;
}

