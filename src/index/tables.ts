import path from 'node:path';
import { open, type RootDatabase, type Database } from 'lmdb';
import { CabError } from '../errors.js';
import { checkBlobName } from '../format/layout.js';
import { lmdbWriteSync } from './lmdb-write.js';
import { paged } from './paging.js';
import { lmdbDamage } from './lmdb-check.js';
import { checkId, checkMetadata, checkPerSyncgroup, checkSignpost, checkUpload, patchMetadata, patchSignpost } from './table-records.js';
import type { BlobMetadata, BlobMetadataPatch, PatchOf, PerSyncgroup, Signpost, SignpostPatch, UploadRecord } from './table-records.js';

export type { BlobMetadata, BlobMetadataPatch, PatchOf, PerSyncgroup, Signpost, SignpostLocation, SignpostPatch, UploadRecord } from './table-records.js';

/** Entries read per page by the streams (values are small objects). */
const PAGE = 256;

/**
 * One table: string keys (checked by `key`), values checked by `check` on
 * the way in, and, for tables that take partial updates, `patch` making a
 * new value of the stored one and a patch. Stored as MessagePack; Dates
 * round-trip to the millisecond.
 */
export class Table<T, P = never> {
  readonly #db: Database<T, string>;
  readonly #key: (k: unknown) => string;
  readonly #check: (v: unknown) => T;
  readonly #patch: ((cur: T | undefined, patch: unknown) => T) | undefined;

  readonly #dir: string;

  /** @internal */
  constructor(db: Database<T, string>, dir: string, key: (k: unknown) => string, check: (v: unknown) => T, patch?: (cur: T | undefined, patch: unknown) => T) {
    this.#db = db;
    this.#dir = dir;
    this.#key = key;
    this.#check = check;
    this.#patch = patch;
  }

  async set(key: string, value: T): Promise<void> {
    this.setter(key, value)();
  }

  /** Checks the key and value now, and returns the write: for a caller that checks more in between. */
  setter(key: string, value: T): () => void {
    const k = this.#key(key);
    const v = this.#check(value);
    return () => lmdbWriteSync('writing a table', this.#dir, () => this.#db.putSync(k, v));
  }

  /**
   * Checks the key (and a patch that is not a function) now, and returns
   * the write: one read-modify-write transaction that stores and returns
   * the patched value. An error in the patch (or thrown by a patch
   * function) writes nothing and comes out as it was thrown.
   */
  updater(key: string, patch: PatchOf<T, P>): () => T {
    const k = this.#key(key);
    const apply = this.#patch;
    if (!apply) throw new CabError('ERR_BAD_ARGUMENT', 'this table takes no partial updates');
    const of = (cur: T | undefined): unknown => (typeof patch === 'function' ? (patch as (c: T | undefined) => P)(cur) : patch);
    if (typeof patch !== 'function') apply(undefined, patch);
    return () => {
      let failed: { e: unknown } | undefined;
      const out = lmdbWriteSync('writing a table', this.#dir, () =>
        this.#db.transactionSync(() => {
          let v: T;
          try {
            const cur = this.#db.get(k);
            v = apply(cur, of(cur));
          } catch (e) {
            failed = { e };
            return undefined;
          }
          this.#db.put(k, v);
          return v;
        }),
      );
      if (failed) throw failed.e;
      return out!;
    };
  }

  get(key: string): T | undefined {
    return this.#db.get(this.#key(key));
  }

  async delete(key: string): Promise<void> {
    const k = this.#key(key);
    lmdbWriteSync('writing a table', this.#dir, () => this.#db.removeSync(k));
  }

  /** All entries ordered by key, lazily. */
  stream(): AsyncGenerator<[string, T]> {
    return paged((last) => this.#entries(last?.[0]), PAGE);
  }

  *#entries(after: string | undefined): Generator<[string, T]> {
    for (const { key, value } of this.#db.getRange(after === undefined ? {} : { start: after })) if (key !== after) yield [key, value];
  }
}

/**
 * The sync tables live in their own LMDB environment under tables/, apart
 * from the derived chunk index, so deleting or rebuilding index/ never
 * touches them. They are primary data.
 */
export class Tables {
  readonly #env: RootDatabase;
  readonly metadata: Table<BlobMetadata, BlobMetadataPatch>;
  readonly signposts: Table<Signpost, SignpostPatch>;
  readonly perSyncgroup: Table<PerSyncgroup>;
  /** Uploads through the HTTP face, by blob name. */
  readonly uploads: Table<UploadRecord>;

  readonly #dir: string;

  private constructor(env: RootDatabase, dir: string) {
    this.#env = env;
    this.#dir = dir;
    const db = <T>(name: string) => env.openDB<T, string>({ name, keyEncoding: 'ordered-binary' });
    this.metadata = new Table(db<BlobMetadata>('metadata'), dir, (k) => checkBlobName(k), checkMetadata, patchMetadata);
    this.signposts = new Table(db<Signpost>('signposts'), dir, (k) => checkBlobName(k), checkSignpost, patchSignpost);
    this.perSyncgroup = new Table(db<PerSyncgroup>('persyncgroup'), dir, (k) => checkId(k, 'a syncgroup id'), checkPerSyncgroup);
    this.uploads = new Table(db<UploadRecord>('uploads'), dir, (k) => checkBlobName(k), checkUpload);
  }

  /**
   * A metadata write (checked already) for a blob held here (`held`):
   * ERR_NO_SUCH_BLOB before it if there is none, and after it, the write
   * undone, if the blob was deleted meanwhile.
   */
  async forHeldBlob<T>(name: string, held: () => Promise<boolean>, write: () => T): Promise<T> {
    const gone = () => new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}: metadata is kept for blobs held here`, { blob: name });
    if (!(await held())) throw gone();
    const out = write();
    if (await held()) return out;
    await this.metadata.delete(name);
    throw gone();
  }

  /** Runs table writes (each its own transaction) as one transaction: one commit, one fdatasync; a write that throws undoes them all. */
  together<T>(writes: () => T): T {
    let failed: { e: unknown } | undefined;
    try {
      return lmdbWriteSync('writing a table', this.#dir, () =>
        this.#env.transactionSync(() => {
          try {
            return writes();
          } catch (e) {
            failed = { e };
            throw e; // undoes the transaction
          }
        }),
      );
    } catch (e) {
      throw failed ? failed.e : e; // a write's own error as it came, not as LMDB's
    }
  }

  static open(dir: string): Tables {
    // Not derived (metadata, signposts, syncgroups): a damaged file is reported, never replaced.
    const damage = lmdbDamage(dir);
    if (damage) {
      throw new CabError('ERR_BAD_STORE', `the tables file ${path.join(dir, 'data.mdb')} (blob metadata, signposts, syncgroups) is damaged: ${damage}; restore it from a backup, or move it away to start with empty tables`, { reason: 'tables-damaged', path: dir });
    }
    return new Tables(open({ path: dir, maxDbs: 8, overlappingSync: false }), dir);
  }

  async close(): Promise<void> {
    await this.#env.close();
  }
}
