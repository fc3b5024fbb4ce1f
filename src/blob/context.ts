import type { ResolvedChunkerParams } from '../chunker/params.js';
import type { ChunkIndex } from '../index/chunk-index.js';
import type { Descriptor } from '../format/descriptor.js';
import type { Layout } from '../format/layout.js';
import type { Lease } from '../disk/lease.js';

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
  /** Throws ERR_CLOSED once the store is closed. */
  checkOpen(): void;
  /** The durable state of a blob, parsed (cached while the descriptor does not change). */
  snapshot(name: string): Promise<Descriptor>;
  /** Bookkeeping of open writers and readers, so that close() can close them. */
  track(resource: { close(): Promise<void> }): void;
  untrack(resource: { close(): Promise<void> }): void;
}
