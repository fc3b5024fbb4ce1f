import type { WireChunk } from './messages.js';
import type { RemoteSource } from './remote.js';

/** Pages of a sender's chunk list kept from checkPrefix for the receiver: the last this many it fetched. */
export const KEPT_LIST_PAGES = 16;

type Page = { chunks: WireChunk[]; end: boolean };

/**
 * A resumed transfer reads the sender's chunk list twice: checkPrefix, to
 * compare it with what is held here, then the receiver, which skips what is
 * held. The pages the first read fetched (the last KEPT_LIST_PAGES of them)
 * are kept, and the second read takes each of them once instead of asking
 * again: with a connection cut every few MiB, the list read twice was much
 * of what went over the wire besides the chunks.
 */
export function sharedListPages(src: RemoteSource): { first: RemoteSource; second: RemoteSource } {
  const kept = new Map<string, Promise<Page>>();
  const key = (name: string, from: number) => `${from} ${name}`;
  const first: RemoteSource = Object.create(src) as RemoteSource;
  first.list = (name, from) => {
    const page = src.list(name, from);
    const k = key(name, from);
    kept.set(k, page);
    page.catch(() => kept.delete(k)); // a failed page is asked for again
    if (kept.size > KEPT_LIST_PAGES) kept.delete(kept.keys().next().value!);
    return page;
  };
  const second: RemoteSource = Object.create(src) as RemoteSource;
  second.list = (name, from) => {
    const k = key(name, from);
    const page = kept.get(k);
    kept.delete(k);
    return page ?? src.list(name, from);
  };
  return { first, second };
}
