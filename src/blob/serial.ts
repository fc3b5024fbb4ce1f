import { raceAbort } from '../errors.js';

/**
 * Runs one writer's calls one after another, in the order they were made.
 * A call with a signal that aborts while it waits for its turn rejects at
 * once (with `aborted()`) and never runs; once it has started, stopping is
 * up to the call.
 */
export class Serial {
  #chain: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>, signal?: AbortSignal, aborted?: () => Error): Promise<T> {
    const turn = this.#chain;
    const fail = () => {
      throw aborted!();
    };
    const p = raceAbort(turn, signal, fail).then(() => (signal?.aborted ? fail() : fn()));
    // The next call waits for this one, or only for the turn if this one gave up waiting.
    this.#chain = turn.then(() => p).catch(() => {});
    return p;
  }
}
