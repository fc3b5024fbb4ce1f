import os from 'node:os';
import { CabError } from '../errors.js';
import { isFragmentId } from '../format/layout.js';
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
}

/** A doomed list: doomed/<time>-<rand>. */
export interface DoomedBody {
  v: 1;
  by: string;
  fragments: string[];
}

const now = () => performance.now();

/**
 * One process's lease in the bucket, and what it knows of GC's doomed
 * lists (docs/FORMAT.md, "GC across stores"). The lease holds every
 * fragment the process needs kept: those its readers and writers pin (as
 * its local lease does, pushed here by disk/lease.ts) and those of its
 * folder's unfinalized and not yet published blobs ("held": they need
 * keeping even while no writer has them open). A lease counts for GC
 * until it is deleted: by its process on close when it holds nothing, or
 * by the next process on the same folder, which holds what it held.
 *
 * Doomed lists are re-read every gcDelay/4 in the background. A new
 * reference to existing fragments is taken only with lists read less than
 * gcDelay/2 before its pin was published (`doomed`), and GC deletes a
 * doomed fragment only gcDelay after publishing the list: so a pin GC did
 * not see was taken by a process that saw the list and left the fragment
 * alone.
 */
export class NodeLease {
  readonly key: string;
  readonly #os: ObjectStore;
  readonly #keys: BucketLayout;
  readonly #body: Omit<BucketLeaseBody, 'fragments'>;
  readonly #gcDelay: number;
  #pinned: string[] = [];
  readonly #held = new Map<string, readonly string[]>();
  /** Publishing: a generation counter so that many changes while one PUT is in flight make one more. */
  #wanted = 0;
  #done = 0;
  #putting: Promise<void> | undefined;
  #lastPut = '';
  readonly #doomed = new Map<string, ReadonlySet<string>>();
  #readAt = -Infinity;
  #reading: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(store: ObjectStore, keys: BucketLayout, node: string, lease: string, gcDelay: number) {
    this.#os = store;
    this.#keys = keys;
    this.key = keys.lease(node, lease);
    this.#body = { v: 1, node, lease, host: os.hostname(), pid: process.pid };
    this.#gcDelay = gcDelay;
  }

  /** Starts re-reading doomed lists in the background (unref'd: it keeps no process alive). */
  start(): void {
    const every = Math.max(50, Math.floor(this.#gcDelay / 4));
    this.#timer = setInterval(() => this.readDoomed().catch(() => {}), every);
    this.#timer.unref();
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

  /** The blob is published (or deleted): its hold goes with the next publish. */
  unhold(name: string): void {
    this.#held.delete(name);
  }

  get holds(): number {
    return this.#held.size;
  }

  /** Writes the lease as it is now; resolves once a PUT that began after this call has succeeded. */
  publish(): Promise<void> {
    const gen = ++this.#wanted;
    const loop = async (): Promise<void> => {
      while (this.#done < this.#wanted) {
        const target = this.#wanted;
        const frags = new Set(this.#pinned);
        for (const f of this.#held.values()) for (const x of f) frags.add(x);
        const body = JSON.stringify({ ...this.#body, fragments: [...frags].sort() } satisfies BucketLeaseBody);
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

  /**
   * Re-reads the doomed lists (a list is immutable: only new ones are
   * fetched). `#readAt` is the time before the LIST was sent, so a list
   * published after it may be missed and is not counted as seen.
   */
  readDoomed(): Promise<void> {
    this.#reading ??= (async () => {
      const t0 = now();
      const seen = new Set<string>();
      for await (const o of this.#os.list(this.#keys.doomedLists)) {
        seen.add(o.key);
        if (this.#doomed.has(o.key)) continue;
        const body = await this.#os.get(o.key);
        if (!body) continue; // deleted between the listing and the read: its fragments are gone or kept
        this.#doomed.set(o.key, new Set(parseDoomed(o.key, body).fragments));
      }
      for (const k of [...this.#doomed.keys()]) if (!seen.has(k)) this.#doomed.delete(k);
      this.#readAt = t0;
    })().finally(() => (this.#reading = undefined));
    return this.#reading;
  }

  /**
   * Whether any of `fragments`, pinned in a lease published at `pinnedAt`
   * (performance.now(), taken after the PUT resolved), is in a doomed
   * list, by lists read less than gcDelay/2 before that (read again if
   * they are older).
   */
  async doomed(fragments: readonly string[], pinnedAt: number): Promise<boolean> {
    if (pinnedAt - this.#readAt >= this.#gcDelay / 2) {
      await this.#reading; // one that began before pinnedAt does not count
      await this.readDoomed();
    }
    return fragments.some((f) => [...this.#doomed.values()].some((s) => s.has(f)));
  }

  /** Stops the timer; deletes the lease if it holds nothing (else the next process on the folder does). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#putting?.catch(() => {});
    if (this.#held.size === 0) await this.#os.deleteMany([this.key]);
    else await this.pins([]);
  }
}

/** A doomed list's body, checked: anything else stops the GC or store that reads it (ERR_OBJECT_STORE). */
export function parseDoomed(key: string, body: Buffer): DoomedBody {
  let d: DoomedBody;
  try {
    d = JSON.parse(body.toString('utf8')) as DoomedBody;
  } catch (e) {
    throw new CabError('ERR_OBJECT_STORE', `the doomed list ${key} is not JSON`, { key }, { cause: e });
  }
  if (d?.v !== 1 || !Array.isArray(d.fragments) || !d.fragments.every((f) => typeof f === 'string' && isFragmentId(f))) {
    throw new CabError('ERR_OBJECT_STORE', `the doomed list ${key} is malformed`, { key });
  }
  return d;
}

/** A lease object's body, checked: a lease GC cannot read stops it (nothing is deleted). */
export function parseLease(key: string, body: Buffer): BucketLeaseBody {
  let l: BucketLeaseBody;
  try {
    l = JSON.parse(body.toString('utf8')) as BucketLeaseBody;
  } catch (e) {
    throw new CabError('ERR_OBJECT_STORE', `the lease ${key} is not JSON (GC stopped, nothing deleted)`, { key }, { cause: e });
  }
  if (l?.v !== 1 || !Array.isArray(l.fragments) || !l.fragments.every((f) => typeof f === 'string' && isFragmentId(f))) {
    throw new CabError('ERR_OBJECT_STORE', `the lease ${key} is malformed (GC stopped, nothing deleted)`, { key });
  }
  return l;
}

