// The records of the sync tables (and the uploads table): their types, and
// the checks and patches that make the values stored.
import { Packr } from 'msgpackr';
import { CabError } from '../errors.js';

/** What a sync app keeps about a blob it holds. */
export interface BlobMetadata {
  /** Syncgroup id -> share count; a share > 0 means the store must keep the blob. */
  ownerShares: Record<string, number>;
  referenced: Date;
  /**
   * When the blob was last used, as the application says (a transfer that
   * brings the blob in sets it too; reads do not): GC's eviction order.
   */
  accessed: Date;
}

/** Where a blob (held here or not) can probably be found. */
export interface Signpost {
  /** Peer name -> where it was seen with the blob. */
  locations: Record<string, SignpostLocation>;
  sgIds: string[];
  fetchAttempts: number;
}

/**
 * One peer a signpost names. A peer named by its URL (ws:// or wss://) is
 * a source fetchBlob pulls from when not told where.
 */
export interface SignpostLocation {
  whenSeen: Date;
  isProxy: boolean;
  isServer: boolean;
  /**
   * The name of the token to present to this peer (never the token
   * itself): fetchBlob looks it up in its `tokens` option, the command
   * line in $CABSTORE_TOKEN_<NAME>. Absent: the default token.
   */
  tokenName?: string;
}

/**
 * A partial update of a blob's metadata (BlobStore.updateBlobMetadata).
 * Fields left out (or undefined) stay as stored; `referenced` and
 * `accessed` replace the stored dates; `ownerShares` is merged per
 * syncgroup: a share given replaces that syncgroup's, `null` removes the
 * syncgroup, syncgroups not named stay. A Partial<BlobMetadata> is one.
 */
export interface BlobMetadataPatch {
  ownerShares?: Record<string, number | null>;
  referenced?: Date;
  accessed?: Date;
}

/**
 * A partial update of a signpost (BlobStore.updateSignpost). Fields left out
 * stay; `locations` is merged per peer: an entry given replaces that peer's
 * whole, `null` removes the peer, peers not named stay; `sgIds` (a list)
 * and `fetchAttempts` replace the stored ones. A Partial<Signpost> is one.
 */
export interface SignpostPatch {
  locations?: Record<string, SignpostLocation | null>;
  sgIds?: string[];
  fetchAttempts?: number;
}

/**
 * A patch, or a function of the stored value (undefined if none) that
 * returns one: it runs synchronously inside the write transaction, so a
 * read-modify-write such as `fetchAttempts + 1` loses no concurrent update.
 */
export type PatchOf<T, P> = P | ((current: T | undefined) => P);

/** Per-syncgroup facts that decide whom to fetch from. */
export interface PerSyncgroup {
  priority: { devType: number; distance: number; serverTime: Date };
}

/**
 * An upload in progress through the HTTP face (tus): what the client said
 * when it created the upload, kept beside the blob it writes (same name),
 * whose durable size is the upload's offset.
 */
export interface UploadRecord {
  /** The Upload-Length, or null while deferred. */
  length: number | null;
  /** The Upload-Metadata pairs (a key without a value: null). */
  metadata: Record<string, string | null>;
  /** The last request that created or wrote the upload: it expires this long after. */
  touched: Date;
}

const MAX_ID = 1024;
/** Bytes of an upload's metadata keys and values, together. */
const MAX_UPLOAD_METADATA = 16 * 1024;

/**
 * The most bytes a sync-table record (metadata, signpost, per-syncgroup)
 * may take as plain MessagePack (maps with their field names, dates as
 * timestamps: what `PLAIN` makes). About 1,650 owner shares or 850
 * signpost locations of 36-character ids; each update rewrites the whole
 * record, and GC and the streams read them all.
 */
export const MAX_RECORD_BYTES = 64 * 1024;
/** msgpackr without shared structures (a record's size does not depend on what the table held before), each map's size in its shortest form. */
const PLAIN = new Packr({ useRecords: false, variableMapSize: true });

/**
 * A record's size as MAX_RECORD_BYTES counts it: packed plainly, each Date
 * counted at the widest timestamp (15 bytes). MessagePack packs a Date of
 * whole seconds 4 bytes shorter than one with milliseconds: counted as
 * packed, a record at the limit could not have a date replaced (its
 * `accessed` updated by every pull), a change that adds nothing.
 */
export function recordBytes(v: unknown): number {
  return PLAIN.pack(widenDates(v)).length;
}

/** A 13-byte bin (2 bytes of head): 15 bytes packed, as a 96-bit timestamp. */
const DATE_WIDE = new Uint8Array(13);

function widenDates(v: unknown): unknown {
  if (v instanceof Date) return DATE_WIDE;
  if (Array.isArray(v)) return v.map(widenDates);
  if (v === null || typeof v !== 'object' || ArrayBuffer.isView(v)) return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[k] = widenDates(x);
  return out;
}

/**
 * `v` (a checked record) if it is within MAX_RECORD_BYTES, or no larger
 * than `was`, the record it replaces (one written before the limit, which
 * an update may keep or shrink); else ERR_BAD_ARGUMENT, data.reason 'too-large'.
 */
function sized<T>(v: T, what: string, was: T | undefined): T {
  const n = recordBytes(v);
  if (n > MAX_RECORD_BYTES && (was === undefined || n > recordBytes(was))) {
    throw new CabError('ERR_BAD_ARGUMENT', `${what} would take ${n} bytes, over the ${MAX_RECORD_BYTES} a record may take`, { reason: 'too-large', expected: MAX_RECORD_BYTES, found: n });
  }
  return v;
}

/** A syncgroup id or peer name: 1..1024 characters, no control characters. */
export function checkId(id: unknown, what: string): string {
  // eslint-disable-next-line no-control-regex
  if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID || /[\u0000-\u001f\u007f]/.test(id)) {
    throw new CabError('ERR_BAD_ARGUMENT', `${what} must be a string of 1..${MAX_ID} characters without control characters`, { found: id });
  }
  return id;
}

/** A key of ownerShares or locations: an id, not "__proto__" (assigning that key to a plain object sets its prototype: lost). */
function mapKey(k: string, what: string): string {
  if (k === '__proto__') throw bad(`${what} cannot be "__proto__" (a plain object would drop that key)`, k);
  return checkId(k, what);
}

function bad(what: string, found?: unknown): CabError {
  return new CabError('ERR_BAD_ARGUMENT', what, { found });
}

function plainObject(x: unknown, what: string): Record<string, unknown> {
  if (x === null || typeof x !== 'object' || Array.isArray(x) || Object.getPrototypeOf(x) !== Object.prototype) throw bad(`${what} must be a plain object`, x);
  return x as Record<string, unknown>;
}

/** `o` has exactly `keys`, and perhaps some of `optional` (those given as undefined count as left out). */
function exactKeys(o: Record<string, unknown>, keys: string[], what: string, optional: string[] = []): void {
  for (const k of Object.keys(o)) if (!keys.includes(k) && !optional.includes(k)) throw bad(`${what} has an unknown field ${JSON.stringify(k)}`, o);
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
/** `was`: the record this one replaces (see sized). */
export function checkMetadata(md: unknown, was?: BlobMetadata): BlobMetadata {
  const o = plainObject(md, 'BlobMetadata');
  exactKeys(o, ['ownerShares', 'referenced', 'accessed'], 'BlobMetadata');
  const shares = plainObject(o.ownerShares, 'ownerShares');
  const ownerShares: Record<string, number> = {};
  for (const [k, v] of Object.entries(shares)) ownerShares[mapKey(k, 'a syncgroup id')] = int(v, `ownerShares[${JSON.stringify(k)}]`);
  return sized({ ownerShares, referenced: date(o.referenced, 'referenced'), accessed: date(o.accessed, 'accessed') }, 'the blob metadata', was);
}

export function checkUpload(u: unknown): UploadRecord {
  const o = plainObject(u, 'UploadRecord');
  exactKeys(o, ['length', 'metadata', 'touched'], 'UploadRecord');
  const metadata: Record<string, string | null> = {};
  let bytes = 0;
  for (const [k, v] of Object.entries(plainObject(o.metadata, 'metadata'))) {
    if (v !== null && typeof v !== 'string') throw bad(`metadata[${JSON.stringify(k)}] must be a string or null`, v);
    if (k === '__proto__') throw bad('an upload metadata key cannot be "__proto__" (a plain object would drop that key)', k);
    bytes += k.length + (v?.length ?? 0);
    metadata[k] = v;
  }
  if (bytes > MAX_UPLOAD_METADATA) throw bad(`upload metadata is over ${MAX_UPLOAD_METADATA} characters`);
  return { length: o.length === null ? null : int(o.length, 'length', 0), metadata, touched: date(o.touched, 'touched') };
}

/** `was`: the record this one replaces (see sized). */
export function checkSignpost(sp: unknown, was?: Signpost): Signpost {
  const o = plainObject(sp, 'Signpost');
  exactKeys(o, ['locations', 'sgIds', 'fetchAttempts'], 'Signpost');
  const locations: Signpost['locations'] = {};
  for (const [peer, loc] of Object.entries(plainObject(o.locations, 'locations'))) {
    const l = plainObject(loc, `locations[${JSON.stringify(peer)}]`);
    exactKeys(l, ['whenSeen', 'isProxy', 'isServer'], 'a signpost location', ['tokenName']);
    locations[mapKey(peer, 'a peer name')] = {
      whenSeen: date(l.whenSeen, 'whenSeen'),
      isProxy: bool(l.isProxy, 'isProxy'),
      isServer: bool(l.isServer, 'isServer'),
      ...(l.tokenName === undefined ? {} : { tokenName: checkId(l.tokenName, 'a token name') }),
    };
  }
  if (!Array.isArray(o.sgIds)) throw bad('sgIds must be an array', o.sgIds);
  const sgIds = o.sgIds.map((s) => checkId(s, 'a syncgroup id'));
  return sized({ locations, sgIds, fetchAttempts: int(o.fetchAttempts, 'fetchAttempts', 0) }, 'the signpost', was);
}

export function checkPerSyncgroup(psg: unknown): PerSyncgroup {
  const o = plainObject(psg, 'PerSyncgroup');
  exactKeys(o, ['priority'], 'PerSyncgroup');
  const p = plainObject(o.priority, 'priority');
  exactKeys(p, ['devType', 'distance', 'serverTime'], 'priority');
  if (typeof p.distance !== 'number' || !Number.isFinite(p.distance)) throw bad('distance must be a finite number', p.distance);
  return { priority: { devType: int(p.devType, 'devType'), distance: p.distance, serverTime: date(p.serverTime, 'serverTime') } };
}

/** The fields of a patch that are given (undefined counts as left out); ERR_BAD_ARGUMENT for one it does not know. */
function patchFields(patch: unknown, keys: string[], what: string): Record<string, unknown> {
  const given: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(plainObject(patch, what))) {
    if (!keys.includes(k)) throw bad(`${what} has an unknown field ${JSON.stringify(k)}`, patch);
    if (v !== undefined) given[k] = v;
  }
  return given;
}

/** A map merged with its patch: a value replaces, null removes. The result is checked by the caller. */
function mergeMap(cur: Record<string, unknown>, patch: unknown, what: string): Record<string, unknown> {
  const out: Record<string, unknown> = { ...cur };
  for (const [k, v] of Object.entries(plainObject(patch, what))) {
    mapKey(k, `a key of ${what}`);
    if (v === null) delete out[k];
    else if (v !== undefined) out[k] = v;
  }
  return out;
}

/** The metadata `patch` makes of `cur` (checked). With no metadata yet, it starts from no shares and both dates now. */
export function patchMetadata(cur: BlobMetadata | undefined, patch: unknown): BlobMetadata {
  const p = patchFields(patch, ['ownerShares', 'referenced', 'accessed'], 'a BlobMetadata patch');
  const now = new Date();
  const base = cur ?? { ownerShares: {}, referenced: now, accessed: now };
  return checkMetadata({
    ownerShares: 'ownerShares' in p ? mergeMap(base.ownerShares, p.ownerShares, 'ownerShares') : base.ownerShares,
    referenced: 'referenced' in p ? p.referenced : base.referenced,
    accessed: 'accessed' in p ? p.accessed : base.accessed,
  }, cur);
}

/** The signpost `patch` makes of `cur` (checked). With no signpost yet, it starts empty: no locations or syncgroups, no attempts. */
export function patchSignpost(cur: Signpost | undefined, patch: unknown): Signpost {
  const p = patchFields(patch, ['locations', 'sgIds', 'fetchAttempts'], 'a Signpost patch');
  const base = cur ?? { locations: {}, sgIds: [], fetchAttempts: 0 };
  return checkSignpost({
    locations: 'locations' in p ? mergeMap(base.locations, p.locations, 'locations') : base.locations,
    sgIds: 'sgIds' in p ? p.sgIds : base.sgIds,
    fetchAttempts: 'fetchAttempts' in p ? p.fetchAttempts : base.fetchAttempts,
  }, cur);
}
