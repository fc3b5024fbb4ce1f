import type fs from 'node:fs/promises';
import zlib from 'node:zlib';
import { FRAME_HEADER, decodeFrame } from './frame.js';

/**
 * Torn tail or corruption: what the bytes after a descriptor's last good
 * record are (docs/FORMAT.md, "Torn tails and corruption").
 *
 * Every writer of a descriptor appends one record and fdatasyncs it before
 * it writes the next (the header is durable before the file has its name).
 * So a crash can leave at most one record not durable, at the end: a prefix
 * of it (the file's size may stop anywhere in it), in which space the write
 * did not reach may read as zeros on some file systems. Anything else after
 * the last good record was not left by a crash, and reading on past it, or
 * cutting it off, would lose records: the descriptor is corrupt.
 */

/** The granule in which a crash may leave unwritten space zero-filled (a disk sector; file system blocks are whole sectors). */
export const SECTOR = 512;

/**
 * Why the bytes [start, fileSize) of a descriptor whose records before
 * `start` are good cannot be a torn tail (so the descriptor is corrupt), or
 * undefined if they can. `maxRecord` bounds one record's payload.
 */
export async function corruptTail(fh: fs.FileHandle, start: number, fileSize: number, maxRecord: number): Promise<string | undefined> {
  const n = fileSize - start;
  if (n > FRAME_HEADER + maxRecord) return `${n} bytes follow the last good record, more than one record can hold`;
  if (n < FRAME_HEADER) return undefined; // a record header cut short
  const tail = Buffer.allocUnsafe(n);
  let got = 0;
  while (got < n) {
    const { bytesRead } = await fh.read(tail, got, n - got, start + got);
    if (bytesRead === 0) return undefined; // cut shorter meanwhile (a writer undoing a failed record): a prefix still
    got += bytesRead;
  }
  const later = laterRecord(tail, maxRecord);
  if (later !== undefined) return `a good record follows at byte ${start + later}`;
  const len = tail.readUInt32LE(0);
  if (FRAME_HEADER + len > n) return undefined; // a record cut short at the end of the file
  // A whole frame that passes its CRC was written whole: as the last thing in the file, it is a record that never
  // counted (readers stopped before it), so leaving it out loses nothing. A crash leaves no bytes after it.
  if (len > 0 && zlib.crc32(tail.subarray(FRAME_HEADER, FRAME_HEADER + len)) === tail.readUInt32LE(4)) {
    return FRAME_HEADER + len === n ? undefined : `${n - FRAME_HEADER - len} bytes that are no record follow the record at byte ${start}`;
  }
  if (zeroFilled(tail, start)) return undefined; // space a crash did not reach, within the one record it cut
  return `the record at byte ${start} is complete but fails its CRC, and no part of it reads as unwritten (zeros): not a write cut short`;
}

/**
 * The offset in `tail` (after 0) of a good frame from which the frames'
 * lengths lead exactly to the end: the records after a damaged one. A
 * crash's leftover is a prefix of one record and holds none (but by a
 * 2^-32 chance of its bytes). Linear: whether the chain from each offset
 * ends exactly at the end is worked out from the end backwards.
 */
function laterRecord(tail: Buffer, maxRecord: number): number | undefined {
  const n = tail.length;
  const lands = new Uint8Array(n);
  for (let q = n - FRAME_HEADER; q > 0; q--) {
    const len = tail.readUInt32LE(q);
    if (len === 0 || len > maxRecord) continue; // no record is empty
    const next = q + FRAME_HEADER + len;
    lands[q] = next === n ? 1 : next < n ? lands[next]! : 0;
  }
  for (let q = 1; q <= n - FRAME_HEADER; q++) {
    if (!lands[q]) continue;
    const len = tail.readUInt32LE(q);
    const rec = decodeFrame(tail.subarray(q, q + FRAME_HEADER), tail.subarray(q + FRAME_HEADER, q + FRAME_HEADER + len));
    if (typeof rec !== 'string') return q;
  }
  return undefined;
}

/** Whether some sector's share of the tail (which starts at file offset `start`) is all zeros. */
function zeroFilled(tail: Buffer, start: number): boolean {
  for (let s = start - (start % SECTOR); s < start + tail.length; s += SECTOR) {
    const lo = Math.max(s, start) - start;
    const hi = Math.min(s + SECTOR, start + tail.length) - start;
    let zero = true;
    for (let i = lo; i < hi && zero; i++) zero = tail[i] === 0;
    if (zero) return true;
  }
  return false;
}
