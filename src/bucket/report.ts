/** What GC did in the bucket of a bucket-backed store (GcReport.bucket; shared/gc.ts). */
export interface BucketGcReport {
  /** Fragments deleted from the bucket: older than gcGrace, referenced by no published descriptor, pinned by no lease. */
  fragmentsDeleted: number;
  bytesDeleted: number;
  /** Fragments in the bucket that stay. */
  fragmentsKept: number;
  bytesKept: number;
  /** Published descriptors and leases read (the last pass). */
  descriptors: number;
  leases: number;
  /** Multipart uploads older than gcGrace aborted (left by killed writers). */
  uploadsAborted: number;
}
