/**
 * Every failure cabstore reports is a CabError with a stable `code`.
 * Callers branch on `code`, never on the message. The table below is the
 * single list of codes; the README documents the same list.
 */
export const ERROR_CODES = {
  ERR_BAD_CHUNKER_PARAMS: 'chunker parameters are not integers with 64 <= min < avg < max <= 64 MiB and avg a power of two',
  ERR_BAD_HASH_STATE: 'a saved merkle hasher state is malformed or inconsistent',
  ERR_BAD_HEX: 'a string is not an even number of lowercase or uppercase hex digits',
  ERR_BAD_ARGUMENT: 'an argument has the wrong type or is out of range',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Extra facts an error carries, for programs that handle it. */
export interface CabErrorData {
  expected?: unknown;
  found?: unknown;
  blob?: string;
  offset?: number;
  path?: string;
  [key: string]: unknown;
}

export class CabError extends Error {
  readonly code: ErrorCode;
  readonly data: CabErrorData;

  constructor(code: ErrorCode, message?: string, data: CabErrorData = {}, options?: { cause?: unknown }) {
    super(`${code}: ${message ?? ERROR_CODES[code]}`, options);
    this.name = 'CabError';
    this.code = code;
    this.data = data;
  }
}

/** Narrowing helper: `isCabError(e, 'ERR_CLOSED')`. */
export function isCabError(e: unknown, code?: ErrorCode): e is CabError {
  return e instanceof CabError && (code === undefined || e.code === code);
}
