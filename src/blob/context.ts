import type { ResolvedChunkerParams } from '../chunker/params.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import type { Lease } from '../disk/lease.js';
import type { Cas } from '../disk/cas.js';

/**
 * What writers and readers need from their store. The store owns the disk;
 * writer/ and reader/ reach it only through this.
 */
export interface StoreInternals {
  readonly layout: Layout;
  readonly index: ChunkIndex;
  /** This process's lease: pins published for GC, and the GC gate. */
  readonly lease: Lease;
  readonly chunker: ResolvedChunkerParams;
  /** A writer seals its current fragment (a durable checkpoint) once it holds this many bytes. */
  readonly fragmentSize: number;
  /** Directories known to exist durably (so a fragment rename fsyncs only its own directory). */
  readonly knownDirs: Set<string>;
  /** Where fragments are read from and sealed into (cas/, and the bucket of a bucket-backed store). */
  readonly cas: Cas;
  /** A bucket-backed store's part in its bucket (shared/node.ts); undefined for a store on disk alone. */
  readonly shared?: SharedHooks;
  /** Throws ERR_CLOSED once the store is closed. */
  checkOpen(): void;
  /** The durable state of a blob, parsed (cached while the descriptor does not change). */
  snapshot(name: string): Promise<Descriptor>;
  /** Bookkeeping of open writers and readers, so that close() can close them. */
  track(resource: { close(): Promise<void> }): void;
  untrack(resource: { close(): Promise<void> }): void;
}

/** What writers and readers of a bucket-backed store tell its bucket, and ask it. */
export interface SharedHooks {
  /** A blob was finalized here: publish its descriptor (resolves once other stores can read it). */
  publish(name: string): Promise<void>;
  /** A writer of an unfinalized (or unpublished) blob lets go: its fragments stay held in the bucket lease. */
  keep(name: string): Promise<void>;
  /**
   * After a new reference to the fragments of blob `name` is pinned:
   * ERR_NO_SUCH_BLOB if the bucket no longer publishes the blob as this
   * folder has it (deleted or healed elsewhere), so GC may take them.
   */
  confirm(name: string): Promise<void>;
  /** A published blob's descriptor was replaced here (healed): the bucket gets the new one, which references its new fragment. */
  replaced(name: string): Promise<void>;
}
