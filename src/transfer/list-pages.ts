import type { WireChunk } from './messages.js';
import type { RemoteSource } from './remote.js';

/** Pages of a sender's chunk list kept from checkPrefix for the receiver: the last this many it fetched. */
export const KEPT_LIST_PAGES = 16;

type Page = { chunks: WireChunk[]; end: boolean };

/**
 * A resumed transfer reads the sender's chunk list twice: checkPrefix, to
 * compare it with what is held here, then the receiver, from the first chunk
 * not held. The pages the first read fetched (the last KEPT_LIST_PAGES of
 * them) are kept, and the second read takes the one holding its start (cut
 * to begin there) and those after it instead of asking again: with a
 * connection cut every few MiB, the list read twice was much of what went
 * over the wire besides the chunks.
 */
export function sharedListPages(src: RemoteSource): { first: RemoteSource; second: RemoteSource } {
  const kept: Array<{ name: string; from: number; page: Promise<Page> }> = [];
  const first: RemoteSource = Object.create(src) as RemoteSource;
  first.list = (name, from, max) => {
    const entry = { name, from, page: src.list(name, from, max) };
    kept.push(entry);
    // A failed page is asked for again.
    entry.page.catch(() => kept.includes(entry) && kept.splice(kept.indexOf(entry), 1));
    if (kept.length > KEPT_LIST_PAGES) kept.shift();
    return entry.page;
  };
  const second: RemoteSource = Object.create(src) as RemoteSource;
  second.list = async (name, from, max) => {
    for (let i = 0; i < kept.length; i++) {
      const e = kept[i]!;
      if (e.name !== name || e.from > from) continue;
      const p = await e.page.catch(() => undefined);
      const at = from - e.from;
      if (!p || at > p.chunks.length || (at === p.chunks.length && !p.end)) continue;
      // Taken once; the pages before it are behind the reader.
      kept.splice(0, kept.indexOf(e) + 1);
      return at === 0 ? p : { chunks: p.chunks.slice(at), end: p.end };
    }
    return src.list(name, from, max);
  };
  return { first, second };
}
