import { CabError, checkSignal } from '../errors.js';
import { resolveStoreChunkerParams } from '../chunker/params.js';
import { MAX_TIMER_MS } from './abort.js';

// Light (no store code): dial() checks its arguments with these before the store's code is loaded.

const bad = (who: string, message: string) => new CabError('ERR_BAD_ARGUMENT', `${who}: ${message}`);

/**
 * Checks the URL and options of dial() or connect() before any socket
 * exists: a bad one is ERR_BAD_ARGUMENT (chunker parameters no store could
 * have, ERR_BAD_CHUNKER_PARAMS), and nothing is left open behind it.
 */
export function checkDialArgs(url: unknown, options: unknown, who: 'dial' | 'connect'): void {
  if (typeof url !== 'string' || !/^wss?:\/\//.test(url)) throw bad(who, `not a ws:// or wss:// URL: ${String(url)}`);
  checkSignal(options, who);
  if (options === undefined) return;
  const o = options as Record<string, unknown>;
  if (o.token !== undefined && typeof o.token !== 'string') throw bad(who, 'token must be a string');
  if (o.ca !== undefined && typeof o.ca !== 'string' && !(o.ca instanceof Uint8Array)) throw bad(who, 'ca must be a PEM string or a Buffer');
  checkMaxFrame(o.maxFrame, who);
  for (const k of ['timeoutMs', 'idleTimeoutMs'] as const) {
    const t = o[k];
    if (t !== undefined && (typeof t !== 'number' || !(t > 0) || t > MAX_TIMER_MS)) throw bad(who, `${k} must be a positive number of milliseconds up to ${MAX_TIMER_MS}, not ${String(t)}`);
  }
  if (o.chunker !== undefined) {
    if (who !== 'dial') throw bad(who, 'chunker is an option of dial (connect announces its store\'s)');
    if (o.chunker === null || typeof o.chunker !== 'object') throw bad(who, 'chunker must be an object of min, avg and max');
    resolveStoreChunkerParams(o.chunker);
  }
}

/** The largest maxFrame: ws keeps its limit as a 32-bit integer (and takes 0 as no limit at all). */
const MAX_FRAME_LIMIT = 2 ** 31 - 1;

/** Checks a maxFrame option (connect's or serve's): a whole number of bytes, 1 to 2^31 - 1, or absent. */
export function checkMaxFrame(v: unknown, who: string): void {
  if (v !== undefined && !(Number.isSafeInteger(v) && (v as number) >= 1 && (v as number) <= MAX_FRAME_LIMIT)) {
    throw new CabError('ERR_BAD_ARGUMENT', `${who}: maxFrame must be a whole number of bytes from 1 to ${MAX_FRAME_LIMIT}, not ${String(v)}`);
  }
}
