import fs from 'node:fs/promises';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Layout } from '../format/layout.js';
import { CabError, ioError } from '../errors.js';
import { isLocked, tryLockExclusive, tryLockShared, unlock } from './lock.js';
import { exists } from './durable.js';
import type { NodeLease } from '../bucket/node-lease.js';

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
  /** What the pins file says now; an absent file says this (nothing pinned). */
  #published = JSON.stringify({ pid: process.pid, fragments: [], blobs: [] } satisfies Pins);
  #publishing: Promise<void> = Promise.resolve();
  #closed = false;
  /**
   * A full disk: pins that could not be written are covered instead by a
   * shared hold on the gate (its own open file), which keeps every GC out
   * until a later publish succeeds. Reading never needs free space.
   */
  #holdFh: fs.FileHandle | undefined;
  #holding = false;
  /** A bucket-backed store's lease in the bucket: every pin is published there too before it counts. */
  #remote: NodeLease | undefined;

  private constructor(layout: Layout, base: string, lockFh: fs.FileHandle, gateFh: fs.FileHandle) {
    this.#layout = layout;
    this.#base = base;
    this.#lockFh = lockFh;
    this.#gateFh = gateFh;
  }

  /** This lease's name: `<pid>-<rand>`, the same in leases/ and in a bucket's nodes/<node>/. */
  get name(): string {
    return path.basename(this.#base);
  }

  /** Publishes every pin in the bucket lease `remote` too (a bucket-backed store). */
  attach(remote: NodeLease): void {
    this.#remote = remote;
  }

  static async take(layout: Layout): Promise<Lease> {
    const name = `${process.pid}-${crypto.randomBytes(6).toString('hex')}`;
    const base = path.join(layout.leases, name);
    // Locked in tmp/ (where GC spares the files of live pids), then renamed into leases/:
    // GC never sees an unlocked lease of a live process.
    const tmp = path.join(layout.tmp, `${name}.lease`);
    const lockFh = await fs.open(tmp, 'wx');
    let gateFh: fs.FileHandle | undefined;
    try {
      if (!tryLockExclusive(lockFh.fd)) throw new CabError('ERR_IO', `a fresh lease file ${tmp} is locked by someone else`, { path: tmp });
      await fs.rename(tmp, `${base}.lease`);
      gateFh = await fs.open(path.join(layout.leases, 'gc.gate'), 'a');
      // No pins file until something is pinned: a live lease without one pins nothing,
      // and opening a store on a full disk writes nothing.
      return new Lease(layout, base, lockFh, gateFh);
    } catch (e) {
      await gateFh?.close().catch(() => {});
      await lockFh.close().catch(() => {});
      await fs.rm(tmp, { force: true }).catch(() => {});
      await fs.rm(`${base}.lease`, { force: true }).catch(() => {});
      throw ioError(e, 'taking a lease on the store', { path: base });
    }
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
    if (take === tryLockExclusive && this.#holding) {
      throw new CabError('ERR_NO_SPACE', 'this process holds pins it could not publish (the disk was full): GC waits until they are published or released');
    }
    await waitFor(take, this.#gateFh.fd, maxWait);
    try {
      return await fn();
    } finally {
      unlock(this.#gateFh.fd);
    }
  }

  /** Covers unpublished pins with a shared hold on the gate (see #holding). */
  async #hold(): Promise<void> {
    if (this.#holding) return;
    this.#holdFh ??= await fs.open(path.join(this.#layout.leases, 'gc.gate'), 'r');
    await waitFor(tryLockShared, this.#holdFh.fd, 20);
    this.#holding = true;
  }

  /**
   * Adds pins and resolves once they are published. If they cannot be
   * (a full disk: ERR_NO_SPACE), they are taken back: the caller must not
   * use what it meant to pin.
   */
  async pin(fragments: Iterable<string>, blobs: Iterable<string> = []): Promise<void> {
    const frags = [...fragments];
    const names = [...blobs];
    let changed = false;
    for (const f of frags) changed = add(this.#frags, f) || changed;
    for (const b of names) changed = add(this.#blobs, b) || changed;
    try {
      if (!changed) {
        // Pinned already, perhaps by a publish still under way: wait until it is out.
        await this.#publishing;
        await this.#remote?.pins(this.#frags.keys());
        return;
      }
      await this.#publish();
    } catch (e) {
      let err = ioError(e, 'publishing pins for GC');
      if (err.code === 'ERR_NO_SPACE') {
        await this.#hold();
        // The local pins wait for space; a bucket's GC does not look at the gate.
        try {
          await this.#remote?.pins(this.#frags.keys());
          return;
        } catch (e2) {
          err = ioError(e2, 'publishing pins for GC');
        }
      }
      for (const f of frags) drop(this.#frags, f);
      for (const b of names) drop(this.#blobs, b);
      throw err;
    }
  }

  /**
   * Drops pins without publishing: the file keeps them (more than needed,
   * never less) until the next pin or unpin publishes the smaller set. For
   * fragments a durable record now references (GC marks those through the
   * descriptor), so that a long writer's pins file stays small rather than
   * growing, and being rewritten whole, at each checkpoint.
   */
  forget(fragments: Iterable<string>): void {
    for (const f of fragments) drop(this.#frags, f);
  }

  /** Drops pins; resolves once the smaller set is published. */
  unpin(fragments: Iterable<string>, blobs: Iterable<string> = []): Promise<void> {
    for (const f of fragments) drop(this.#frags, f);
    for (const b of blobs) drop(this.#blobs, b);
    return this.#publish();
  }

  #publish(): Promise<void> {
    const next = this.#publishing.then(async () => {
      if (this.#closed) return;
      const body = JSON.stringify({ pid: process.pid, fragments: [...this.#frags.keys()], blobs: [...this.#blobs.keys()] } satisfies Pins);
      if (body !== this.#published) {
        const tmp = `${this.#base}.pins.tmp`;
        try {
          await fs.writeFile(tmp, body);
          await fs.rename(tmp, `${this.#base}.pins`);
        } catch (e) {
          await fs.rm(tmp, { force: true }).catch(() => {});
          throw e;
        }
        this.#published = body;
      }
      // The file tells the truth again (rewritten now, or the pins came back to what it said, as when
      // a pin a full disk kept out of it is dropped): the hold taken meanwhile goes, GC may go by it.
      if (this.#holding) {
        this.#holding = false;
        unlock(this.#holdFh!.fd);
      }
      await this.#remote?.pins(this.#frags.keys());
    });
    this.#publishing = next.catch(() => {});
    return next;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#publishing;
    this.#closed = true;
    try {
      await fs.rm(`${this.#base}.pins`, { force: true });
      await fs.rm(`${this.#base}.lease`, { force: true });
    } finally {
      // The lock goes with the descriptor: even if the files stay, GC sees a dead lease.
      await this.#lockFh.close().catch(() => {});
      await this.#gateFh.close().catch(() => {});
      await this.#holdFh?.close().catch(() => {});
    }
  }
}

/** Takes a flock with `take`, polling with backoff up to `maxWait` ms between tries. */
async function waitFor(take: (fd: number) => boolean, fd: number, maxWait: number): Promise<void> {
  for (let wait = 1; !take(fd); wait = Math.min(wait * 2, maxWait)) await sleep(wait);
}

/** Counts a reference; true if it is the first. */
function add(m: Map<string, number>, k: string): boolean {
  const n = m.get(k) ?? 0;
  m.set(k, n + 1);
  return n === 0;
}

/** Drops a reference. */
function drop(m: Map<string, number>, k: string): void {
  const n = (m.get(k) ?? 0) - 1;
  if (n <= 0) m.delete(k);
  else m.set(k, n);
}

/**
 * Every live lease's pins; the files of dead leases are removed (unless
 * dryRun). A live lease whose pins cannot be read (EMFILE, EIO, a garbage
 * file) stops GC with ERR_IO: its process may hold anything, so nothing
 * may be deleted. Only an absent pins file means "pins nothing yet".
 */
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
    const p = await readPins(`${base}.pins`);
    if (p) pins.push(p);
  }
  return { pins, livePids, deadLeases };
}

/** A live lease's pins file; undefined if there is none (nothing pinned yet). */
async function readPins(file: string): Promise<Pins | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(e, `reading the pins of a live lease (GC stopped, nothing deleted)`, { path: file });
  }
  let p: unknown;
  try {
    p = JSON.parse(text);
  } catch (e) {
    throw new CabError('ERR_IO', `the pins file ${file} of a live lease is not JSON (GC stopped, nothing deleted)`, { path: file }, { cause: e });
  }
  const ok = (a: unknown) => Array.isArray(a) && a.every((x) => typeof x === 'string');
  if (typeof p !== 'object' || p === null || !ok((p as Pins).fragments) || !ok((p as Pins).blobs)) {
    throw new CabError('ERR_IO', `the pins file ${file} of a live lease is malformed (GC stopped, nothing deleted)`, { path: file });
  }
  return p as Pins;
}

/** Whether the process that took lease `name` (`<pid>-<rand>`) on this folder still has the store open. */
export function leaseLives(layout: Layout, name: string): Promise<boolean> {
  return isLocked(path.join(layout.leases, `${name}.lease`));
}
