import fs from 'node:fs/promises';
import type { Layout } from '../format/layout.js';
import { isFragmentId } from '../format/layout.js';
import { walk } from './walk.js';

/**
 * The local cas/ of a bucket-backed store, as a cache bounded by `max`
 * bytes: least recently used fragments are unlinked first. Every file in
 * cas/ of such a store has its object in the bucket (a fragment is
 * uploaded before it is renamed into cas/, a fetched one came from there),
 * so any of them may go; a reader holding one open keeps reading it, and
 * the next read of it fetches it again. The accounting is this process's:
 * files another process adds count from when this one reads them.
 */
export class FragmentCache {
  readonly #layout: Layout;
  readonly #max: number;
  /** Fragment -> size; Map order is recency, least recent first. */
  readonly #lru = new Map<string, number>();
  #bytes = 0;
  #evicting: Promise<void> | undefined;

  constructor(layout: Layout, max: number) {
    this.#layout = layout;
    this.#max = max;
  }

  /** What is in cas/ now, oldest (by mtime) first. */
  async load(): Promise<void> {
    const found: Array<[string, number, number]> = [];
    for await (const id of walk(this.#layout.casRoot, 2)) {
      if (!isFragmentId(id)) continue;
      try {
        const st = await fs.stat(this.#layout.fragment(id));
        found.push([id, st.size, st.mtimeMs]);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
    found.sort((a, b) => a[2] - b[2]);
    for (const [id, size] of found) this.add(id, size, false);
    this.#evict();
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** A read of a cached fragment: it becomes the most recent. */
  touch(id: string, size?: number): void {
    const s = this.#lru.get(id);
    if (s === undefined) {
      if (size !== undefined) this.add(id, size);
      return;
    }
    this.#lru.delete(id);
    this.#lru.set(id, s);
  }

  /** A fragment now in cas/ (sealed here, or fetched). */
  add(id: string, size: number, evict = true): void {
    const old = this.#lru.get(id);
    if (old !== undefined) this.#bytes -= old;
    this.#lru.delete(id);
    this.#lru.set(id, size);
    this.#bytes += size;
    if (evict) this.#evict();
  }

  /** A fragment deleted from cas/ by someone else (GC). */
  forget(id: string): void {
    const s = this.#lru.get(id);
    if (s === undefined) return;
    this.#lru.delete(id);
    this.#bytes -= s;
  }

  #evict(): void {
    if (this.#bytes <= this.#max || this.#evicting) return;
    this.#evicting = (async () => {
      while (this.#bytes > this.#max) {
        const [id, size] = this.#lru.entries().next().value as [string, number];
        this.#lru.delete(id);
        this.#bytes -= size;
        await fs.unlink(this.#layout.fragment(id)).catch(() => {}); // gone already, or cannot go: only a cache
      }
    })().finally(() => (this.#evicting = undefined));
  }

  /** Waits for eviction under way (tests, close). */
  async settled(): Promise<void> {
    await this.#evicting;
  }
}
