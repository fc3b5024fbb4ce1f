import { CabError } from '../errors.js';
import { checkSignal } from '../blob/input.js';
import { BlobStore } from '../store.js';
import { MAX_TIMER_MS } from './abort.js';


const bad = (message: string) => new CabError('ERR_BAD_ARGUMENT', `connect: ${message}`);

/**
 * Checks connect()'s arguments before any socket exists: a bad one is
 * ERR_BAD_ARGUMENT, and nothing is left open behind it.
 */
export function checkConnectArgs(store: unknown, url: unknown, options: unknown): void {
  if (!(store instanceof BlobStore)) throw bad('the first argument must be an open BlobStore');
  if (typeof url !== 'string' || !/^wss?:\/\//.test(url)) throw bad(`not a ws:// or wss:// URL: ${String(url)}`);
  checkSignal(options, 'connect');
  if (options === undefined) return;
  const o = options as Record<string, unknown>;
  if (o.token !== undefined && typeof o.token !== 'string') throw bad('token must be a string');
  if (o.ca !== undefined && typeof o.ca !== 'string' && !(o.ca instanceof Uint8Array)) throw bad('ca must be a PEM string or a Buffer');
  checkMaxFrame(o.maxFrame, 'connect');
  for (const k of ['timeoutMs', 'idleTimeoutMs'] as const) {
    const t = o[k];
    if (t !== undefined && (typeof t !== 'number' || !(t > 0) || t > MAX_TIMER_MS)) throw bad(`${k} must be a positive number of milliseconds up to ${MAX_TIMER_MS}, not ${String(t)}`);
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
