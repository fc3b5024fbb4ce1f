import zlib from 'node:zlib';
import { Packr } from 'msgpackr';

/**
 * Record framing, shared by descriptors, bundles and have-files:
 *
 *   u32 LE payload length | u32 LE CRC-32 (IEEE) of the payload | payload
 *
 * where the payload is one MessagePack map. Limits on the length are the
 * caller's (a descriptor record and a bundle record differ).
 */
export const FRAME_HEADER = 8;

/**
 * The one MessagePack codec for stored records and wire messages: plain maps
 * and arrays (no msgpackr records or extension types, so another
 * implementation reads them), 64-bit integers decoded as numbers (a value
 * beyond 2^53 then fails the safe-integer checks instead of arriving as a
 * bigint).
 */
export const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number' } as ConstructorParameters<typeof Packr>[0]);

/** One record, framed. */
export function encodeFrame(rec: object): Buffer {
  const payload = packr.pack(rec);
  const out = Buffer.allocUnsafe(FRAME_HEADER + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(zlib.crc32(payload), 4);
  payload.copy(out, FRAME_HEADER);
  return out;
}

/** The payload length a frame header announces. */
export function frameLength(header: Uint8Array): number {
  return Buffer.from(header.buffer, header.byteOffset, FRAME_HEADER).readUInt32LE(0);
}

/**
 * The record in `payload`, checked against the CRC in `header`, or why it
 * is not one (a string, for the caller to turn into its own error).
 */
export function decodeFrame(header: Uint8Array, payload: Uint8Array): Record<string, unknown> | string {
  if (zlib.crc32(payload) !== Buffer.from(header.buffer, header.byteOffset, FRAME_HEADER).readUInt32LE(4)) return 'record fails its CRC';
  let rec: unknown;
  try {
    rec = packr.unpack(payload);
  } catch {
    return 'record does not decode';
  }
  if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) return 'record is not a map';
  return rec as Record<string, unknown>;
}
