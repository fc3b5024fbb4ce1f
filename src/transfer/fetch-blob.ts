import { CabError, isCabError } from '../errors.js';
import { bytesEqual, hashArg, toHex } from '../hash/sha256.js';
import { checkBlobName } from '../format/layout.js';
import type { BlobStore, Signpost } from '../store.js';
import type { ChunkerParams } from '../chunker/params.js';
import { checkCount, checkSignal } from '../blob/input.js';
import { announcedDoubt } from './remote-reader.js';
import { receiveBlob } from './receive.js';
import { DEFAULT_STALL_MS, SourceSet, type SourceReport } from './sources.js';
import { withHexJSON, type ReceiveOptions, type TransferStats } from './stats.js';
import { connect } from './connect.js';
import { throwIfAborted } from './abort.js';

export type { SourceReport } from './sources.js';

export { DEFAULT_STALL_MS };

/** A server to pull from, and how to authenticate to it. */
export interface FetchSource {
  /** The server's ws:// or wss:// URL. */
  url: string;
  /** Its token (kept in memory only). */
  token?: string;
  /** The name of its token, looked up in `tokens` (a signpost records this, never the token). */
  tokenName?: string;
}

export interface FetchOptions extends Pick<ReceiveOptions, 'onProgress' | 'signal'> {
  /**
   * The servers to pull from, all at once: URLs, or FetchSources. Default:
   * the peers in the blob's signpost whose names are ws:// or wss:// URLs,
   * the most recently seen first.
   */
  from?: Array<string | FetchSource>;
  /**
   * The blob's root as the application knows it, from a source it trusts
   * (32 bytes or 64 hex digits): a server announcing another is not used.
   * Without it, the first source's root is taken (the first in `from`
   * whose stat answers), and a server announcing another is not used.
   */
  hash?: Uint8Array | string;
  /**
   * The blob's size as the application knows it, with `hash`: a server
   * announcing another is not used. Without it, a blob announced as 64
   * bytes is refused when `hash` is given (see OpenReaderOptions.size).
   */
  size?: number;
  /** The token for sources given none (and no token name). */
  token?: string;
  /** Tokens by name, for sources (and signpost peers) that name theirs: a map, or a function. */
  tokens?: Record<string, string> | ((tokenName: string) => string | undefined);
  /** PEM CA for wss:// servers with a private CA or a self-signed certificate. */
  ca?: string | Buffer;
  /** Give up connecting to a server after this long (default 10 s). */
  connectTimeoutMs?: number;
  /** A server that owes answers and sends nothing for this long is dropped (default DEFAULT_STALL_MS). */
  stallMs?: number;
}

export interface FetchStats extends TransferStats {
  /** What each source did: bytes and chunks it sent, and why it was dropped if it was. */
  sources: SourceReport[];
}

/**
 * Pulls blob `name` into `store` from every source at once: the chunk
 * ranges go to the sources by how fast each answers (each takes the next
 * get when it has room), a source that closes, stalls, announces another
 * root or sends a byte that fails its check is dropped and its work goes
 * to the others. Fails only when no source is left, with the last one's
 * error (`data.sources` says what each did); what was written stays,
 * unfinalized, and the next pull (from any source) resumes it. Only what
 * the store lacks travels, as in `client.pull`, which is this with one
 * source. The sources used go into the blob's signpost (with their token
 * names, never tokens).
 */
export async function fetchBlob(store: BlobStore, name: string, options: FetchOptions = {}): Promise<FetchStats> {
  checkBlobName(name);
  checkSignal(options, 'fetchBlob');
  const trusted = options.hash === undefined ? undefined : hashArg(options.hash, 'hash');
  if (options.size !== undefined) checkCount(options.size, 'size');
  const sources = sourcesOf(options.from ?? (await signpostSources(store.getSignpost(name))), name);
  throwIfAborted(options.signal, name);
  const set = new SourceSet({ name, signal: options.signal, stallMs: options.stallMs ?? DEFAULT_STALL_MS, solo: sources.length === 1 });
  const clients = sources.map((s) => {
    const p = (async () => {
      const token = tokenFor(s, options);
      const c = await connect(store, s.url, {
        ...(token === undefined ? {} : { token }),
        ...(options.ca ? { ca: options.ca } : {}),
        ...(options.connectTimeoutMs === undefined ? {} : { timeoutMs: options.connectTimeoutMs }),
        ...(options.signal ? { signal: options.signal } : {}),
      });
      try {
        return { c, st: await c.stat(name) };
      } catch (e) {
        await c.close();
        throw e;
      }
    })();
    p.catch(() => {}); // each is looked at below
    return p;
  });
  // The root: the trusted one, else the first source's (in order) that answers with a finalized blob.
  const root = (async () => {
    if (trusted) return { hash: trusted, size: options.size, chunker: undefined as ChunkerParams | undefined, trusted: true };
    for (const p of clients) {
      const got = await p.catch(() => undefined);
      if (got?.st.finalized && got.st.hash) return { hash: got.st.hash, size: got.st.size, chunker: got.c.peer.remoteChunker, trusted: false };
    }
    return undefined;
  })();
  let over = false;
  // Sources with other chunker params have other chunk lists: all follow the root's source's, else the first added's.
  let chunker: ChunkerParams | undefined;
  let size: number | undefined;
  sources.forEach((s, i) => {
    set.expect(
      (async () => {
        let got: Awaited<(typeof clients)[number]>;
        try {
          got = await clients[i]!;
        } catch (e) {
          return set.refuse(s.url, isCabError(e) ? e : new CabError('ERR_CONNECTION', `cannot connect to ${s.url}: ${(e as Error).message}`, {}, { cause: e }));
        }
        const r = await root;
        const why = refusal(got.st, r, got.c.peer.remoteChunker, r?.chunker ?? chunker, r?.size ?? size, s.url, name);
        if (why) {
          await got.c.close();
          return set.refuse(s.url, why);
        }
        chunker ??= got.c.peer.remoteChunker;
        size ??= got.st.size;
        const e = set.add(got.c.peer.source(), () => got.c.close(), s.tokenName);
        // A connection that closes is a source gone, even one with nothing asked of it.
        void got.c.closed.then(() => over || set.drop(e, new CabError('ERR_CONNECTION', `${s.url}: the connection closed`, { blob: name })));
      })(),
    );
  });
  try {
    const r = await root;
    await set.pick(); // a source agreed (or none will: its failure)
    const stats = await receiveBlob(store, set, name, { size: size!, hash: r!.hash }, { ...(options.signal ? { signal: options.signal } : {}), ...(options.onProgress ? { onProgress: options.onProgress } : {}) });
    return withHexJSON({ ...stats, sources: set.reports() });
  } catch (e) {
    if (isCabError(e)) e.data.sources = set.reports();
    throw e;
  } finally {
    over = true;
    await set.close();
    // Sources still connecting are closed as they come.
    for (const p of clients) void p.then((x) => x.c.close()).catch(() => {});
  }
}

/** Why a source's stat disqualifies it, if it does. */
function refusal(
  st: { size: number; finalized: boolean; hash?: Uint8Array },
  root: { hash: Uint8Array; trusted: boolean } | undefined,
  its: ChunkerParams | undefined,
  agreed: ChunkerParams | undefined,
  size: number | undefined,
  url: string,
  name: string,
): CabError | undefined {
  if (!st.finalized || !st.hash) return new CabError('ERR_BLOB_NOT_FINALIZED', `${url}: blob ${name} is not finalized there`, { blob: name });
  if (!root) return new CabError('ERR_BLOB_NOT_FINALIZED', `no source has blob ${name} finalized`, { blob: name });
  const doubt = announcedDoubt({ size: st.size, hash: st.hash }, root.trusted ? root.hash : undefined, size, url, name);
  if (doubt) return doubt;
  if (!bytesEqual(st.hash, root.hash)) {
    return new CabError('ERR_HASH_MISMATCH', `${url} announces root ${toHex(st.hash)} for blob ${name}, not ${toHex(root.hash)}`, { blob: name, expected: toHex(root.hash), found: toHex(st.hash) });
  }
  if (agreed && its && (its.min !== agreed.min || its.avg !== agreed.avg || its.max !== agreed.max)) {
    return new CabError('ERR_PROTOCOL', `${url} chunks with other parameters than the other sources (its chunk list would differ)`, { blob: name, expected: agreed, found: its });
  }
  return undefined;
}

/** The `from` option as FetchSources (each URL once); ERR_BAD_ARGUMENT for anything else, or none. */
function sourcesOf(from: unknown, name: string): FetchSource[] {
  if (!Array.isArray(from)) throw new CabError('ERR_BAD_ARGUMENT', 'fetchBlob: from must be an array of URLs or { url, token?, tokenName? }');
  const out = new Map<string, FetchSource>();
  for (const f of from) {
    const s = (typeof f === 'string' ? { url: f } : f) as FetchSource;
    if (s === null || typeof s !== 'object' || typeof s.url !== 'string' || !/^wss?:\/\/./.test(s.url)) {
      throw new CabError('ERR_BAD_ARGUMENT', `fetchBlob: a source is a ws:// or wss:// URL, or { url, token?, tokenName? }, not ${JSON.stringify(f)}`);
    }
    if ((s.token !== undefined && typeof s.token !== 'string') || (s.tokenName !== undefined && typeof s.tokenName !== 'string')) {
      throw new CabError('ERR_BAD_ARGUMENT', `fetchBlob: ${s.url}: token and tokenName are strings`);
    }
    if (!out.has(s.url)) out.set(s.url, s);
  }
  if (out.size === 0) throw new CabError('ERR_BAD_ARGUMENT', `fetchBlob: no source for blob ${name}: give from, or record its peers in its signpost`, { blob: name });
  return [...out.values()];
}

/** The signpost's peers that are servers we can reach (named by URL), the most recently seen first. */
async function signpostSources(sp: Promise<Signpost | undefined>): Promise<FetchSource[]> {
  const locations = Object.entries((await sp)?.locations ?? {});
  locations.sort(([, a], [, b]) => b.whenSeen.getTime() - a.whenSeen.getTime());
  return locations.filter(([url]) => /^wss?:\/\/./.test(url)).map(([url, l]) => ({ url, ...(l.tokenName === undefined ? {} : { tokenName: l.tokenName }) }));
}

/** The token to present to `s`: its own, else its token name's, else the default. A token name not found: ERR_AUTH (that source only). */
function tokenFor(s: FetchSource, o: FetchOptions): string | undefined {
  if (s.token !== undefined) return s.token;
  if (s.tokenName === undefined) return o.token;
  const t = typeof o.tokens === 'function' ? o.tokens(s.tokenName) : o.tokens && Object.hasOwn(o.tokens, s.tokenName) ? o.tokens[s.tokenName] : undefined;
  if (t === undefined) throw new CabError('ERR_AUTH', `${s.url}: no token named ${JSON.stringify(s.tokenName)} (the tokens option)`, { found: s.tokenName });
  return t;
}
