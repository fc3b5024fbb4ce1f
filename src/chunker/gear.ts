import crypto from 'node:crypto';

/**
 * The FastCDC gear table: 256 pseudo-random 32-bit words, fixed forever for
 * format 1 because chunk boundaries (and so dedup across stores) depend on it.
 *
 * GEAR[i] = the first 4 bytes, big-endian, of SHA-256 of the single byte i.
 * Generated here rather than pasted so anyone can re-derive it; a test pins
 * the table's own SHA-256 and docs/FORMAT.md lists its first words.
 * Stored as signed 32-bit integers so the hot loop stays in small-integer math.
 */
export const GEAR: Int32Array = (() => {
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    table[i] = crypto.createHash('sha256').update(Uint8Array.of(i)).digest().readInt32BE(0);
  }
  return table;
})();
