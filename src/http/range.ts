/**
 * What a GET sends of a blob of `size` bytes (RFC 9110 §14): the whole of
 * it, one range [start, end) (end exclusive), or nothing (416). Pure, and
 * tested without a socket.
 */
export type RangeAnswer = { kind: 'all' } | { kind: 'range'; start: number; end: number } | { kind: 'unsatisfiable' };

const BYTE_RANGE = /^(\d*)-(\d*)$/;

/**
 * The answer to a Range header. A header that is absent, not in bytes,
 * malformed, or that asks for several ranges is ignored (the whole blob is
 * sent, as RFC 9110 allows: this server does not build multipart answers).
 * `bytes=a-b` is [a, b] inclusive, cut at the end of the blob; `bytes=a-`
 * from a to the end; `bytes=-n` the last n bytes. A range that starts at or
 * past the end, or a suffix of 0 bytes, is unsatisfiable. Numbers of any
 * length count (RFC 9110 puts no bound on them): a last position far past
 * the end means the end, a first position there is unsatisfiable (compared
 * as doubles, which keeps their order).
 */
export function parseRange(header: string | undefined, size: number): RangeAnswer {
  if (header === undefined) return { kind: 'all' };
  const m = /^\s*bytes\s*=\s*(.*)$/i.exec(header);
  if (!m || m[1]!.includes(',')) return { kind: 'all' };
  const r = BYTE_RANGE.exec(m[1]!.trim());
  if (!r || (r[1] === '' && r[2] === '')) return { kind: 'all' };
  const first = r[1] === '' ? undefined : Number(r[1]);
  const last = r[2] === '' ? undefined : Number(r[2]);
  if (first === undefined) {
    // A suffix: the last `last` bytes.
    if (last === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', start: Math.max(0, size - last!), end: size };
  }
  if (last !== undefined && last < first) return { kind: 'all' }; // invalid, so ignored
  if (first >= size) return { kind: 'unsatisfiable' };
  return { kind: 'range', start: first, end: last === undefined ? size : Math.min(size, last + 1) };
}

/**
 * Whether an If-Range header lets the Range apply: only a strong ETag
 * equal to the blob's (a date, or any other tag, means the client's copy
 * may be another, so the whole blob is sent).
 */
export function ifRangeHolds(header: string | undefined, etag: string): boolean {
  return header === undefined || header.trim() === etag;
}

/** Whether an If-None-Match header names this ETag (or `*`): the answer is then 304. Weak comparison, as RFC 9110 asks. */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  const bare = (t: string) => t.trim().replace(/^W\//, '');
  return header.split(',').some((t) => t.trim() === '*' || bare(t) === etag);
}
