import { open, type RootDatabase, type Database } from 'lmdb';
import { CabError } from '../errors.js';
import { checkBlobName } from '../format/layout.js';
import { lmdbWriteSync } from './lmdb-write.js';
import { paged } from './paging.js';

/** What a sync app keeps about a blob it holds. */
export interface BlobMetadata {
  /** Syncgroup id -> share count; a share > 0 means the store must keep the blob. */
  ownerShares: Record<string, number>;
  referenced: Date;
  accessed: Date;
}

/** Where a blob (held here or not) can probably be found. */
export interface Signpost {
  locations: Record<string, { whenSeen: Date; isProxy: boolean; isServer: boolean }>;
  sgIds: string[];
  fetchAttempts: number;
}

/** Per-syncgroup facts that decide whom to fetch from. */
export interface PerSyncgroup {
  priority: { devType: number; distance: number; serverTime: Date };
}

const MAX_ID = 1024;

/** A syncgroup id or peer name: 1..1024 characters, no control characters. */
export function checkId(id: unknown, what: string): string {
  // eslint-disable-next-line no-control-regex
  if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID || /[\u0000-\u001f\u007f]/.test(id)) {
    throw new CabError('ERR_BAD_ARGUMENT', `${what} must be a string of 1..${MAX_ID} characters without control characters`, { found: id });
  }
  return id;
}

function bad(what: string, found?: unknown): CabError {
  return new CabError('ERR_BAD_ARGUMENT', what, { found });
}

function plainObject(x: unknown, what: string): Record<string, unknown> {
  if (x === null || typeof x !== 'object' || Array.isArray(x) || Object.getPrototypeOf(x) !== Object.prototype) throw bad(`${what} must be a plain object`, x);
  return x as Record<string, unknown>;
}

function exactKeys(o: Record<string, unknown>, keys: string[], what: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw bad(`${what} has an unknown field ${JSON.stringify(k)}`, o);
  for (const k of keys) if (!(k in o)) throw bad(`${what} lacks ${k}`, o);
}

function date(x: unknown, what: string): Date {
  if (!(x instanceof Date) || Number.isNaN(x.getTime())) throw bad(`${what} must be a valid Date`, x);
  return new Date(x.getTime());
}

function int(x: unknown, what: string, min = Number.MIN_SAFE_INTEGER): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < min) throw bad(`${what} must be an integer${min === 0 ? ' >= 0' : ''}`, x);
  return x;
}

function bool(x: unknown, what: string): boolean {
  if (typeof x !== 'boolean') throw bad(`${what} must be a boolean`, x);
  return x;
}

/** Checks a BlobMetadata and returns a normalized copy (what is stored). */
export function checkMetadata(md: unknown): BlobMetadata {
  const o = plainObject(md, 'BlobMetadata');
  exactKeys(o, ['ownerShares', 'referenced', 'accessed'], 'BlobMetadata');
  const shares = plainObject(o.ownerShares, 'ownerShares');
  const ownerShares: Record<string, number> = {};
  for (const [k, v] of Object.entries(shares)) ownerShares[checkId(k, 'a syncgroup id')] = int(v, `ownerShares[${JSON.stringify(k)}]`);
  return { ownerShares, referenced: date(o.referenced, 'referenced'), accessed: date(o.accessed, 'accessed') };
}

export function checkSignpost(sp: unknown): Signpost {
  const o = plainObject(sp, 'Signpost');
  exactKeys(o, ['locations', 'sgIds', 'fetchAttempts'], 'Signpost');
  const locations: Signpost['locations'] = {};
  for (const [peer, loc] of Object.entries(plainObject(o.locations, 'locations'))) {
    const l = plainObject(loc, `locations[${JSON.stringify(peer)}]`);
    exactKeys(l, ['whenSeen', 'isProxy', 'isServer'], 'a signpost location');
    locations[checkId(peer, 'a peer name')] = { whenSeen: date(l.whenSeen, 'whenSeen'), isProxy: bool(l.isProxy, 'isProxy'), isServer: bool(l.isServer, 'isServer') };
  }
  if (!Array.isArray(o.sgIds)) throw bad('sgIds must be an array', o.sgIds);
  return { locations, sgIds: o.sgIds.map((s) => checkId(s, 'a syncgroup id')), fetchAttempts: int(o.fetchAttempts, 'fetchAttempts', 0) };
}

export function checkPerSyncgroup(psg: unknown): PerSyncgroup {
  const o = plainObject(psg, 'PerSyncgroup');
  exactKeys(o, ['priority'], 'PerSyncgroup');
  const p = plainObject(o.priority, 'priority');
  exactKeys(p, ['devType', 'distance', 'serverTime'], 'priority');
  if (typeof p.distance !== 'number' || !Number.isFinite(p.distance)) throw bad('distance must be a finite number', p.distance);
  return { priority: { devType: int(p.devType, 'devType'), distance: p.distance, serverTime: date(p.serverTime, 'serverTime') } };
}

/** Entries read per page by the streams (values are small objects). */
const PAGE = 256;

/**
 * One table: string keys (checked by `key`), values checked by `check` on
 * the way in. Stored as MessagePack; Dates round-trip to the millisecond.
 */
export class Table<T> {
  readonly #db: Database<T, string>;
  readonly #key: (k: unknown) => string;
  readonly #check: (v: unknown) => T;

  readonly #dir: string;

  /** @internal */
  constructor(db: Database<T, string>, dir: string, key: (k: unknown) => string, check: (v: unknown) => T) {
    this.#db = db;
    this.#dir = dir;
    this.#key = key;
    this.#check = check;
  }

  async set(key: string, value: T): Promise<void> {
    const k = this.#key(key);
    const v = this.#check(value);
    lmdbWriteSync('writing a table', this.#dir, () => this.#db.putSync(k, v));
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
  readonly metadata: Table<BlobMetadata>;
  readonly signposts: Table<Signpost>;
  readonly perSyncgroup: Table<PerSyncgroup>;

  private constructor(env: RootDatabase, dir: string) {
    this.#env = env;
    const db = <T>(name: string) => env.openDB<T, string>({ name, keyEncoding: 'ordered-binary' });
    this.metadata = new Table(db<BlobMetadata>('metadata'), dir, (k) => checkBlobName(k), checkMetadata);
    this.signposts = new Table(db<Signpost>('signposts'), dir, (k) => checkBlobName(k), checkSignpost);
    this.perSyncgroup = new Table(db<PerSyncgroup>('persyncgroup'), dir, (k) => checkId(k, 'a syncgroup id'), checkPerSyncgroup);
  }

  static open(dir: string): Tables {
    return new Tables(open({ path: dir, maxDbs: 8, overlappingSync: false }), dir);
  }

  async close(): Promise<void> {
    await this.#env.close();
  }
}
