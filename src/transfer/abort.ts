import { CabError, raceAbort, throwIfAborted as throwIf } from '../errors.js';

/** The longest timer Node keeps (a longer one fires at once, with a warning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** ERR_ABORTED for `blob`, carrying the signal's reason. */
export function abortError(signal: AbortSignal, blob?: string): CabError {
  return new CabError('ERR_ABORTED', 'the transfer was cancelled', blob === undefined ? {} : { blob }, { cause: signal.reason });
}

/** Throws ERR_ABORTED if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined, blob?: string): void {
  throwIf(signal, 'the transfer', blob === undefined ? {} : { blob });
}

/**
 * Waits for `p`, or throws ERR_ABORTED as soon as the signal fires. `p`
 * goes on, and its failure is then nobody's: it is observed here, so that
 * it does not end the process as an unhandled rejection (a request that
 * fails when the connection closes, after the caller gave up on it).
 */
export function orAbort<T>(p: Promise<T>, signal: AbortSignal | undefined, blob?: string): Promise<T> {
  return raceAbort(p, signal, () => {
    throw abortError(signal!, blob);
  });
}
