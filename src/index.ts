export { CabError, ERROR_CODES, isCabError, type ErrorCode, type CabErrorData } from './errors.js';
export * from './hash/index.js';
export * from './chunker/index.js';
export { BlobStore, DEFAULT_FRAGMENT_SIZE, type StoreOptions, type ChunkRef, type RecipeStep, type Location, type BlobMetadata, type Signpost, type PerSyncgroup, type FsckOptions, type FsckReport, type GcOptions, type GcReport } from './fsstore/store.js';
export { BlobWriter, type AppendItem } from './writer/writer.js';
export { BlobReader, type StreamOptions } from './reader/reader.js';
export type { FsckProblem, FsckProblemKind } from './fsstore/fsck.js';
export type { GcProgress } from './gc/gc.js';
