// Where a store keeps things on disk, for tests that damage, inspect or
// remove files behind the store's back. Computed from the store's public
// root with the one Layout (house rule 2), never from the store's internals.
import { Layout } from '../../src/format/layout.js';
import type { BlobStore } from '../../src/index.js';

const layoutOf = (store: BlobStore): Layout => new Layout(store.root);

/** The descriptor file of a blob (blob/ab/<name>). */
export const descriptorPath = (store: BlobStore, name: string): string => layoutOf(store).descriptor(name);
/** The fan-out directory a blob's descriptor lives in. */
export const blobDirPath = (store: BlobStore, name: string): string => layoutOf(store).blobDir(name);
/** A fragment file (cas/ab/cd/<id>). */
export const fragmentPath = (store: BlobStore, id: string): string => layoutOf(store).fragment(id);
/** The temp directory (fragments in flight, lease files being made). */
export const tmpDir = (store: BlobStore): string => layoutOf(store).tmp;
/** The directory of process leases and pin files. */
export const leasesDir = (store: BlobStore): string => layoutOf(store).leases;
/** The chunk index's LMDB directory. */
export const indexDir = (store: BlobStore): string => layoutOf(store).index;
