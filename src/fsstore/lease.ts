import fs from 'node:fs/promises';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Layout } from './layout.js';
import { isLocked, tryLockExclusive, tryLockShared, unlock } from './lock.js';
import { exists } from './durable.js';

/** What a live process publishes in its lease: what GC must not collect. */
export interface Pins {
  pid: number;
  /** Fragments this process's open readers and writers use or are about to reference. */
  fragments: string[];
  /** Blobs open here (eviction leaves them alone). */
  blobs: string[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * A process's lease on a store, and the GC gate.
 *
 * Lease: `leases/<pid>-<rand>.lease`, flock'd exclusively for as long as the
 * store is open (the kernel drops it when the process dies), beside
 * `leases/<pid>-<rand>.pins`, a JSON Pins file rewritten (temp + rename)
 * whenever a pin is added. GC trusts the pins of live leases only.
 *
 * Gate: `leases/gc.gate`. Taking a new reference to existing fragments (a
 * reader opening, a writer deduplicating or appending a blob range) holds a
 * shared flock on it from reading the descriptor until the pins are
 * published; GC holds it exclusively from reading the pins until it has
 * deleted. See docs/FORMAT.md, "Garbage collection".
 */
export class Lease {
  readonly #layout: Layout;
  readonly #base: string;
  readonly #lockFh: fs.FileHandle;
  readonly #gateFh: fs.FileHandle;
  readonly #frags = new Map<string, number>();
  readonly #blobs = new Map<string, number>();
  #published = '';
  #publishing: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(layout: Layout, base: string, lockFh: fs.FileHandle, gateFh: fs.FileHandle) {
    this.#layout = layout;
    this.#base = base;
    this.#lockFh = lockFh;
    this.#gateFh = gateFh;
  }

  static async take(layout: Layout): Promise<Lease> {
    const name = `${process.pid}-${crypto.randomBytes(6).toString('hex')}`;
    const base = path.join(layout.leases, name);
    // Locked in tmp/ (where GC spares the files of live pids), then renamed into leases/:
    // GC never sees an unlocked lease of a live process.
    const tmp = path.join(layout.tmp, `${name}.lease`);
    const lockFh = await fs.open(tmp, 'wx');
    if (!tryLockExclusive(lockFh.fd)) throw new Error('a fresh lease file is locked');
    await fs.rename(tmp, `${base}.lease`);
    const gateFh = await fs.open(path.join(layout.leases, 'gc.gate'), 'a');
    const lease = new Lease(layout, base, lockFh, gateFh);
    await lease.#publish();
    return lease;
  }

  /**
   * Runs `fn` with the gate held shared, so no GC decides between the
   * moment `fn` reads a descriptor and the moment its pins are published.
   */
  gate<T>(fn: () => Promise<T>): Promise<T> {
    return this.#withGate(tryLockShared, 20, fn);
  }

  /** The gate held exclusively (GC). */
  gateExclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.#withGate(tryLockExclusive, 10, fn);
  }

  async #withGate<T>(take: (fd: number) => boolean, maxWait: number, fn: () => Promise<T>): Promise<T> {
    for (let wait = 1; !take(this.#gateFh.fd); wait = Math.min(wait * 2, maxWait)) await sleep(wait);
    try {
      return await fn();
    } finally {
      unlock(this.#gateFh.fd);
    }
  }

  /** Adds pins and resolves once they are published. */
  async pin(fragments: Iterable<string>, blobs: Iterable<string> = []): Promise<void> {
    let changed = false;
    for (const f of fragments) {
      const n = this.#frags.get(f) ?? 0;
      this.#frags.set(f, n + 1);
      if (n === 0) changed = true;
    }
    for (const b of blobs) {
      const n = this.#blobs.get(b) ?? 0;
      this.#blobs.set(b, n + 1);
      if (n === 0) changed = true;
    }
    if (changed) await this.#publish();
  }

  /** Drops pins; resolves once the smaller set is published. */
  unpin(fragments: Iterable<string>, blobs: Iterable<string> = []): Promise<void> {
    const drop = (m: Map<string, number>, k: string) => {
      const n = (m.get(k) ?? 0) - 1;
      if (n <= 0) m.delete(k);
      else m.set(k, n);
    };
    for (const f of fragments) drop(this.#frags, f);
    for (const b of blobs) drop(this.#blobs, b);
    return this.#publish();
  }

  #publish(): Promise<void> {
    const next = this.#publishing.then(async () => {
      if (this.#closed) return;
      const body = JSON.stringify({ pid: process.pid, fragments: [...this.#frags.keys()], blobs: [...this.#blobs.keys()] } satisfies Pins);
      if (body === this.#published) return;
      const tmp = `${this.#base}.pins.tmp`;
      await fs.writeFile(tmp, body);
      await fs.rename(tmp, `${this.#base}.pins`);
      this.#published = body;
    });
    this.#publishing = next.catch(() => {});
    return next;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#publishing;
    this.#closed = true;
    await fs.rm(`${this.#base}.pins`, { force: true });
    await fs.rm(`${this.#base}.lease`, { force: true });
    await this.#lockFh.close();
    await this.#gateFh.close();
  }
}

/** Every live lease's pins; the files of dead leases are removed (unless dryRun). */
export async function livePins(layout: Layout, dryRun = false): Promise<{ pins: Pins[]; livePids: Set<number>; deadLeases: number }> {
  const pins: Pins[] = [];
  const livePids = new Set<number>();
  let deadLeases = 0;
  for (const ent of await fs.readdir(layout.leases)) {
    if (!ent.endsWith('.lease')) continue;
    const base = path.join(layout.leases, ent.slice(0, -'.lease'.length));
    if (!(await isLocked(`${base}.lease`))) {
      // Nobody holds it (or its owner closed meanwhile): its pins are gone with it.
      if (await exists(`${base}.lease`)) {
        deadLeases++;
        if (!dryRun) {
          await fs.rm(`${base}.pins`, { force: true });
          await fs.rm(`${base}.pins.tmp`, { force: true });
          await fs.rm(`${base}.lease`, { force: true });
        }
      }
      continue;
    }
    livePids.add(Number(ent.split('-')[0]));
    try {
      pins.push(JSON.parse(await fs.readFile(`${base}.pins`, 'utf8')) as Pins);
    } catch {
      // A lease whose pins are not written yet pins nothing yet.
    }
  }
  return { pins, livePids, deadLeases };
}
