import { CabError, isCabError } from '../errors.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Extent } from '../format/extents.js';
import type { StoreInternals } from './context.js';

/**
 * The fragments one writer references but did not write itself: pinned in
 * the lease (so GC keeps them) until the writer closes, with the snapshots
 * they came from.
 */
export class WriterPins {
  readonly #s: StoreInternals;
  readonly #pinned = new Set<string>();
  readonly #snapshots = new WeakSet<Descriptor>();
  #released = false;

  constructor(s: StoreInternals) {
    this.#s = s;
  }

  /**
   * A blob whose fragments the writer is about to reference. Its fragments
   * are pinned with the GC gate held, so that the blob may be deleted
   * meanwhile and GC still keeps them.
   */
  async source(name: string): Promise<Descriptor> {
    const d = await this.#s.snapshot(name);
    this.#throwIfReleased(name);
    if (this.#snapshots.has(d)) return d;
    return this.#s.lease.gate(async () => {
      const fresh = await this.#s.snapshot(name); // under the gate: it still exists
      this.#throwIfReleased(name);
      const add = fresh.extents.fragments().filter((f) => !this.#pinned.has(f));
      for (const f of add) this.#pinned.add(f);
      await this.#s.lease.pin(add);
      // A bucket-backed store: refused if the blob was deleted elsewhere (GC may have found its fragments unreferenced).
      await this.#s.shared?.confirm(name);
      // Released meanwhile: release() unpinned these too (they were in #pinned), and the caller must not use them.
      this.#throwIfReleased(name);
      this.#snapshots.add(fresh);
      return fresh;
    });
  }

  /**
   * Bytes [from, size) of a stored copy of a chunk in a blob the index
   * knows (its fragments pinned), or undefined. `seen`: the sources looked
   * at for the chunks before this one in the same block (a block's chunks
   * mostly come from one blob: its descriptor is checked once per block,
   * not once per chunk, about 10 us each; a snapshot a block old is no
   * staler than one a chunk old can be by the time it is used). `hit`:
   * told where the copy taken is.
   */
  async stored(hash: Uint8Array, size: number, from = 0, seen?: Map<string, Descriptor>, hit?: (blob: string, offset: number, d: Descriptor) => void): Promise<Extent[] | undefined> {
    for (const loc of this.#s.index.locations(hash)) {
      if (loc.size !== size) continue;
      let d = seen?.get(loc.blob);
      try {
        d ??= await this.source(loc.blob);
      } catch (e) {
        if (isCabError(e, 'ERR_NO_SUCH_BLOB')) continue;
        throw e;
      }
      seen?.set(loc.blob, d);
      if (loc.offset + size > d.size || (d.damagedAt !== undefined && loc.offset + size > d.damagedAt)) continue;
      hit?.(loc.blob, loc.offset, d);
      return [...d.extents.slice(loc.offset + from, size - from)];
    }
    return undefined;
  }

  #throwIfReleased(name: string): void {
    if (this.#released) throw new CabError('ERR_CLOSED', `the writer referencing blob ${name} is closed`, { blob: name });
  }

  /**
   * A fragment the writer made is referenced by a durable record of its
   * descriptor: GC marks it from there, so its pin goes (lease.forget). Not
   * in a bucket-backed store, whose other nodes cannot see this folder's
   * unfinalized descriptors: there the pin is what the bucket lease carries.
   */
  durable(id: string): void {
    if (this.#s.shared || !this.#pinned.delete(id)) return;
    this.#s.lease.forget([id]);
  }

  /** Pins a fragment the writer made, before it appears in cas/, so no GC takes it before a record references it. */
  async fragment(id: string): Promise<void> {
    if (this.#pinned.has(id)) return;
    this.#pinned.add(id);
    await this.#s.lease.pin([id]);
  }

  /**
   * Unpins the fragments and the blob `name` (pinned when the writer
   * opened). A bucket-backed store first hands them over: a finalized blob
   * is published (its descriptor in the bucket keeps them), an unfinalized
   * one's fragments are held in the bucket lease. Throws only if a
   * finalized blob could not be published: it stays held, and the next
   * sync publishes it.
   */
  async release(name: string, finalized: boolean): Promise<void> {
    this.#released = true;
    let unpublished: unknown;
    const shared = this.#s.shared;
    if (shared && finalized) {
      await shared.publish(name).catch(async (e: unknown) => {
        unpublished = e;
        await shared.keep(name).catch(() => {});
      });
    } else if (shared) {
      await shared.keep(name).catch(() => {}); // held in memory at least: the next publish of the lease carries it
    }
    await this.#s.lease.unpin(this.#pinned, [name]).catch(() => {});
    this.#pinned.clear();
    if (unpublished !== undefined) throw unpublished;
  }
}
