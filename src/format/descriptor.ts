import fs from 'node:fs/promises';
import { CabError, ioError } from '../errors.js';
import { HASH_SIZE, toHex, fromHex } from '../hash/sha256.js';
import { LEAF_SIZE, type MerkleState } from '../hash/merkle.js';
import { ChunkRecords } from './chunk-records.js';
import { normalizeDamage, type DamageRange } from './damage.js';
import { ExtentMap } from './extents.js';
import { FRAME_HEADER, decodeFrame, encodeFrame } from './frame.js';
import { FORMAT_VERSION } from './layout.js';
import { corruptTail } from './tail.js';
import { openDescriptor } from './descriptor-file.js';

export { openDescriptor };

/**
 * A descriptor is an append-only file of records, each framed as frame.ts
 * says (length, CRC-32, one MessagePack map; see docs/FORMAT.md). The first
 * record that is short, fails its CRC, or does not make sense after the ones
 * before it ends the descriptor: everything before it stands, if what
 * follows can be a torn tail (what a crash leaves, see tail.ts). If it
 * cannot, or the header is bad, the descriptor is corrupt:
 * ERR_DESCRIPTOR_CORRUPT, and nothing may read, write or cut it.
 */
export const RECORD_HEADER = FRAME_HEADER;
/** A record larger than this is corrupt (a real one holds at most one fragment's chunks). */
export const MAX_RECORD = 64 * 1024 * 1024;

export interface HeaderRecord {
  t: 'h';
  /** Format version. */
  v: number;
  name: string;
  /** Creation time, ms since the epoch. */
  ctime: number;
}

/** Appended bytes (and, with `h`, the end of the blob). */
export interface AppendRecord {
  t: 'x';
  /** Blob size after this record. */
  s: number;
  /** New extents: [fragment id (32 bytes), offset in fragment, size]. */
  x: Array<[Uint8Array, number, number]>;
  /**
   * Chunks that ended since the previous record, packed: 36 bytes each,
   * SHA-256 then size as u32 BE (one bin, not an array of arrays: a record of
   * a 64 MiB checkpoint holds a thousand chunks, and decoding them one
   * MessagePack array at a time dominated every parse).
   */
  c: Uint8Array;
  /** Merkle state after this record: [full leaves, concatenated subtree roots]. */
  m: [number, Uint8Array];
  /** Present on the last record of a finalized blob: its BEP 52 hash. */
  h?: Uint8Array;
  /**
   * The SHA-256 of the open chunk's bytes, from the last chunk boundary to
   * `s`, when they are not empty. With the chunk hashes it covers every
   * byte of an unfinalized blob (fragments are not named by their bytes).
   * Absent in records written before 2026-12-04.
   */
  p?: Uint8Array;
}

/**
 * Written by fsck --repair: the blob's bytes [o, e) are lost (a fragment is
 * missing or corrupt), in whole chunks. Without `e` (written by older
 * versions), from `o` to the end. May follow the final record; a blob may
 * have several.
 */
export interface DamageRecord {
  t: 'd';
  o: number;
  e?: number;
  why: string;
}

export type DescriptorRecord = HeaderRecord | AppendRecord | DamageRecord;

/** Bytes per packed chunk entry: SHA-256 and u32 BE size. */
export const CHUNK_ENTRY = 36;

export function packChunks(chunks: ReadonlyArray<readonly [Uint8Array, number]>): Uint8Array {
  const out = Buffer.allocUnsafe(chunks.length * CHUNK_ENTRY);
  chunks.forEach(([h, size], i) => {
    out.set(h, i * CHUNK_ENTRY);
    out.writeUInt32BE(size, i * CHUNK_ENTRY + 32);
  });
  return out;
}

/** The chunks of a packed list: [SHA-256 (a view), size]. */
export function* chunkEntries(c: Uint8Array): Generator<[Uint8Array, number]> {
  const dv = new DataView(c.buffer, c.byteOffset, c.byteLength);
  for (let i = 0; i + CHUNK_ENTRY <= c.length; i += CHUNK_ENTRY) yield [c.subarray(i, i + 32), dv.getUint32(i + 32)];
}

export function encodeRecord(rec: DescriptorRecord): Buffer {
  return encodeFrame(rec);
}

/** The first record of every descriptor: the format version, the blob's name and its creation time. */
export function encodeHeader(name: string, ctime: number): Buffer {
  return encodeRecord({ t: 'h', v: FORMAT_VERSION, name, ctime });
}

export function merkleToRecord(state: MerkleState): [number, Uint8Array] {
  return [state.leaves, Buffer.concat(state.stack.map(fromHex))];
}

export function merkleFromRecord(size: number, m: [number, Uint8Array]): MerkleState {
  const stack: string[] = [];
  for (let i = 0; i < m[1].length; i += HASH_SIZE) stack.push(toHex(m[1].subarray(i, i + HASH_SIZE)));
  return { size, leaves: m[0], stack };
}

/** What a descriptor says, up to its last good record. */
export interface Descriptor {
  name: string;
  ctime: number;
  size: number;
  finalized: boolean;
  hash?: Uint8Array;
  extents: ExtentMap;
  /** Chunks recorded, and where the last one ends (the last chunk boundary). */
  chunkCount: number;
  chunkEnd: number;
  merkle: MerkleState;
  /** The last record's `p`: the SHA-256 of the bytes from chunkEnd to size (undefined if none, or not recorded). */
  openHash?: Uint8Array;
  /** Where each record's chunk list is in the file (a reader pages them in from there). */
  chunkRecords: ChunkRecords;
  /** Byte length of the good records; the file may be longer (`torn`). */
  validEnd: number;
  fileSize: number;
  /** The file's inode: a descriptor rewritten (healed, cut back) is a new file. */
  ino: number;
  /** Bytes after the last good record that a crash may have left (a torn tail): ignored, and cut by a writer that resumes the blob. */
  torn: boolean;
  /** Why the descriptor ended early, when it did. */
  tornReason?: string;
  /** Where the header record ends (the first append record starts). */
  headerEnd: number;
  /** The damage records: lost byte ranges, sorted and merged (empty if none). */
  damage: DamageRange[];
  /** Where the first damage starts, and why (undefined if none). */
  damagedAt?: number;
  damagedWhy?: string;
}

export interface ReadDescriptorOptions {
  /** Called for each good append record, with its byte range in the file. */
  onAppend?: (rec: AppendRecord, start: number, end: number, chunkOffset: number) => void | Promise<void>;
  /** Keep the extent map (a reader needs it; index catch-up does not). */
  extents?: boolean;
  /**
   * Go on from this parse of the same file (a follower: records are only
   * appended) instead of from the start: its extent map and chunk records
   * grow in place, and the state it had is taken up at its validEnd.
   */
  from?: Descriptor;
}

function isBytes(x: unknown, len?: number): x is Uint8Array {
  return x instanceof Uint8Array && (len === undefined || x.length === len);
}

function isCount(x: unknown): x is number {
  return Number.isSafeInteger(x) && (x as number) >= 0;
}

/** Checks an append record against the state before it: why it is bad, or where its last chunk ends. */
function checkAppend(r: Record<string, unknown>, size: number, chunkEnd: number, finalized: boolean): string | { chunkEnd: number } {
  if (finalized) return 'append record after the final record';
  if (!isCount(r.s) || !Array.isArray(r.x) || !isBytes(r.c) || r.c.length % CHUNK_ENTRY !== 0 || !Array.isArray(r.m)) return 'malformed append record';
  let added = 0;
  for (const e of r.x as unknown[]) {
    if (!Array.isArray(e) || !isBytes(e[0], HASH_SIZE) || !isCount(e[1]) || !isCount(e[2]) || e[2] === 0) return 'malformed extent';
    added += e[2];
  }
  if (size + added !== r.s) return 'extents do not add up to the size';
  let chunks = chunkEnd;
  const c = r.c as Uint8Array;
  const dv = new DataView(c.buffer, c.byteOffset, c.byteLength);
  for (let i = 32; i < c.length; i += CHUNK_ENTRY) {
    const size = dv.getUint32(i);
    if (size === 0) return 'malformed chunk';
    chunks += size;
  }
  if (chunks > r.s) return 'chunks past the end of the blob';
  const [leaves, stack] = r.m as unknown[];
  if (!isCount(leaves) || !isBytes(stack) || leaves !== Math.floor(r.s / LEAF_SIZE)) return 'malformed merkle state';
  if (r.h !== undefined && (!isBytes(r.h, HASH_SIZE) || chunks !== r.s)) return 'malformed final record';
  if (r.p !== undefined && (!isBytes(r.p, HASH_SIZE) || chunks === r.s)) return 'malformed open chunk hash';
  return { chunkEnd: chunks };
}

/**
 * ERR_DESCRIPTOR_CORRUPT: the records of a blob's descriptor cannot be
 * trusted from `offset` on, and what follows is not what a crash leaves.
 */
export function descriptorCorrupt(name: string, offset: number, why: string): CabError {
  return new CabError(
    'ERR_DESCRIPTOR_CORRUPT',
    `the descriptor of blob ${name} is corrupt at byte ${offset}: ${why}. The blob is not read, written or collected until it is mended (see docs/FORMAT.md, "Torn tails and corruption")`,
    { blob: name, offset, reason: why },
  );
}

/**
 * The record framed in `frame` (its header and payload, exactly), or why it
 * is not one.
 */
function unframe(frame: Buffer): Record<string, unknown> | string {
  return decodeFrame(frame.subarray(0, RECORD_HEADER), frame.subarray(RECORD_HEADER));
}

/**
 * Reads again the record at file bytes [start, end) of a descriptor parsed
 * before, through a handle on that same file. It was good then; if it is
 * not now, the file changed under its reader: ERR_IO.
 */
export async function readRecordAt(fh: fs.FileHandle, start: number, end: number): Promise<Record<string, unknown>> {
  const frame = Buffer.allocUnsafe(end - start);
  const { bytesRead } = await fh.read(frame, 0, frame.length, start);
  const rec = bytesRead === frame.length && frame.readUInt32LE(0) === frame.length - RECORD_HEADER ? unframe(frame) : 'record is short';
  if (typeof rec === 'string') throw new CabError('ERR_IO', `descriptor bytes ${start}..${end} changed after they were read: ${rec}`, { offset: start });
  return rec;
}

/**
 * Reads a descriptor in blocks, never all at once. Throws ERR_NO_SUCH_BLOB if
 * the file does not exist.
 */
export async function readDescriptor(file: string, name: string, opts: ReadDescriptorOptions = {}): Promise<Descriptor> {
  const fh = await openDescriptor(file, name, 'r');
  try {
    return await readDescriptorFrom(fh, name, opts);
  } finally {
    await fh.close();
  }
}

/** Reads a descriptor from a handle on it (the file a reader holds, whatever its name now points at). A read that fails is ERR_IO. */
export async function readDescriptorFrom(fh: fs.FileHandle, name: string, opts: ReadDescriptorOptions = {}): Promise<Descriptor> {
  try {
    return await parse(fh, name, opts);
  } catch (e) {
    throw ioError(e, `reading the descriptor of blob ${name}`, { blob: name });
  }
}

/** Reads a descriptor held in memory (one fetched from a bucket). */
export function readDescriptorBytes(bytes: Buffer, name: string, opts: ReadDescriptorOptions = {}): Promise<Descriptor> {
  const fh = {
    stat: async () => ({ size: bytes.length, ino: 0 }),
    read: async (buf: Uint8Array, off: number, len: number, pos: number) => ({ bytesRead: bytes.copy(buf, off, pos, Math.min(bytes.length, pos + len)) }),
  };
  return parse(fh as unknown as fs.FileHandle, name, opts);
}

async function parse(fh: fs.FileHandle, name: string, opts: ReadDescriptorOptions): Promise<Descriptor> {
  const { size: fileSize, ino } = await fh.stat();
  const prev = opts.from;
  const d: Descriptor = prev ? { ...prev, fileSize, torn: false, tornReason: undefined, damage: [...prev.damage] } : {
    name,
    ctime: 0,
    size: 0,
    finalized: false,
    extents: new ExtentMap(),
    chunkCount: 0,
    chunkEnd: 0,
    merkle: { size: 0, leaves: 0, stack: [] },
    chunkRecords: new ChunkRecords(),
    damage: [],
    validEnd: 0,
    fileSize,
    ino,
    torn: false,
    headerEnd: 0,
  };
  let hasHeader = prev !== undefined;
  let pos = prev?.validEnd ?? 0;
  let buf = Buffer.allocUnsafe(Math.min(Math.max(fileSize - pos, 64), 1 << 20));
  let bufStart = 0; // file offset of buf[0]
  let bufLen = 0;
  const ensure = async (from: number, len: number): Promise<boolean> => {
    if (from + len > fileSize) return false;
    if (from >= bufStart && from + len <= bufStart + bufLen) return true;
    if (len > buf.length) buf = Buffer.allocUnsafe(len);
    const want = Math.min(buf.length, fileSize - from);
    const { bytesRead } = await fh.read(buf, 0, want, from);
    bufStart = from;
    bufLen = bytesRead;
    return bytesRead >= len;
  };
  const stop = (why: string) => {
    d.torn = true;
    d.tornReason = why;
  };
  while (pos < fileSize) {
    if (!(await ensure(pos, RECORD_HEADER))) {
      stop('torn record header');
      break;
    }
    const len = buf.readUInt32LE(pos - bufStart);
    if (len > MAX_RECORD || !(await ensure(pos, RECORD_HEADER + len))) {
      stop('torn record');
      break;
    }
    const rec = unframe(buf.subarray(pos - bufStart, pos - bufStart + RECORD_HEADER + len));
    if (typeof rec === 'string') {
      stop(rec);
      break;
    }
    const end = pos + RECORD_HEADER + len;
    if (rec.t === 'h') {
      if (hasHeader || pos !== 0 || rec.name !== name || !isCount(rec.v)) {
        stop('misplaced or foreign header');
        break;
      }
      if ((rec.v as number) > FORMAT_VERSION) throw new CabError('ERR_FORMAT_VERSION', `descriptor of ${name} is format ${rec.v}`, { blob: name, found: rec.v });
      hasHeader = true;
      d.headerEnd = end;
      d.ctime = Number(rec.ctime) || 0;
    } else if (rec.t === 'x') {
      const checked = hasHeader ? checkAppend(rec, d.size, d.chunkEnd, d.finalized) : 'append record before the header';
      if (typeof checked === 'string') {
        stop(checked);
        break;
      }
      const r = rec as unknown as AppendRecord;
      if (opts.extents !== false) for (const [f, o, s] of r.x) d.extents.push(toHex(f), o, s);
      await opts.onAppend?.(r, pos, end, d.chunkEnd);
      if (r.c.length > 0) d.chunkRecords.push(pos, end, d.chunkEnd, r.c.length / CHUNK_ENTRY);
      d.chunkEnd = checked.chunkEnd;
      d.chunkCount += r.c.length / CHUNK_ENTRY;
      d.size = r.s;
      d.merkle = merkleFromRecord(r.s, r.m);
      d.openHash = r.p ? Uint8Array.from(r.p) : undefined;
      if (r.h) {
        d.finalized = true;
        d.hash = Uint8Array.from(r.h);
      }
    } else if (rec.t === 'd') {
      if (!hasHeader || !isCount(rec.o) || typeof rec.why !== 'string' || (rec.e !== undefined && !isCount(rec.e))) {
        stop('malformed damage record');
        break;
      }
      d.damage.push({ o: rec.o as number, e: (rec.e as number | undefined) ?? Infinity, why: rec.why as string });
    } else {
      stop(`unknown record type ${JSON.stringify(rec.t)}`);
      break;
    }
    pos = end;
    d.validEnd = end;
  }
  // The header is durable before the descriptor has its name: without it, it is no crash's doing.
  if (!hasHeader) throw descriptorCorrupt(name, 0, fileSize === 0 ? 'the file is empty, with no header record' : `no good header record (${d.tornReason})`);
  if (d.torn) {
    const why = await corruptTail(fh, d.validEnd, fileSize, MAX_RECORD);
    if (why !== undefined) throw descriptorCorrupt(name, d.validEnd, `${d.tornReason}, and ${why}`);
  }
  d.damage = normalizeDamage(d.damage.map((r) => ({ ...r, e: Math.min(r.e, d.size) })));
  d.damagedAt = d.damage[0]?.o;
  d.damagedWhy = d.damage[0]?.why;
  return d;
}
