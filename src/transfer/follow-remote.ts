import { Readable } from 'node:stream';
import { CabError } from '../errors.js';
import { bytesEqual, sha256, toHex } from '../hash/sha256.js';
import { MerkleHasher } from '../hash/merkle.js';
import { FOLLOW_POLL_MS } from '../blob/follow.js';
import { MAX_LIST, type GetItem, type WireChunk } from './messages.js';
import { getBytes, type RemoteSource } from './remote.js';
import { abortError, orAbort, throwIfAborted } from './abort.js';

/** Options of CabClient.stream. */
export interface RemoteStreamOptions {
  /**
   * Follow a blob the server is still writing: the stream waits at the end
   * of the chunks the server has recorded, and ends once the blob is
   * finalized and every byte is in. Default false: the blob must be
   * finalized (ERR_BLOB_NOT_FINALIZED).
   */
  follow?: boolean;
  /** Destroys the stream with ERR_ABORTED. */
  signal?: AbortSignal;
  /** Bytes buffered ahead of the consumer (default 2 MiB). */
  highWaterMark?: number;
}

/** Chunks of the sender's list fetched with one `get` (at most `per` bytes, or one chunk in ranges of `per`). */
function batches(chunks: WireChunk[], per: number): WireChunk[][] {
  const out: WireChunk[][] = [];
  let cur: WireChunk[] = [];
  let bytes = 0;
  for (const c of chunks) {
    if (cur.length > 0 && bytes + c[1] > per) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(c);
    bytes += c[1];
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/**
 * The chunks of one batch, each checked against its SHA-256 from the list.
 * A chunk larger than `per` is asked for in ranges and put together first
 * (it is at most the sender's max chunk size).
 */
async function fetchBatch(src: RemoteSource, name: string, batch: WireChunk[], at: number, per: number): Promise<Uint8Array[]> {
  const items: GetItem[] = [];
  for (const [hash, size] of batch) for (let off = 0; off < size; off += per) items.push([hash, off, Math.min(per, size - off)]);
  const got: Uint8Array[] = [];
  for (let i = 0; i < items.length; i += 4096) got.push(...(await src.get(items.slice(i, i + 4096))));
  const out: Uint8Array[] = [];
  let k = 0;
  for (const [hash, size] of batch) {
    const parts = got.slice(k, (k += Math.ceil(size / per)));
    const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    const found = sha256(bytes);
    if (bytes.length !== size || !bytesEqual(found, hash)) {
      throw new CabError('ERR_HASH_MISMATCH', `blob ${name}: bytes ${at}..${at + size} from ${src.label} do not hash to their chunk`, { blob: name, offset: at, expected: toHex(hash), found: toHex(found) });
    }
    out.push(bytes);
    at += size;
  }
  return out;
}

/**
 * A remote blob's bytes in order, as the server's chunk list names them:
 * each chunk checked against its SHA-256 from the list before it is handed
 * out, and, once the blob is finalized and read to its end, all of them
 * against its BEP 52 root (ERR_HASH_MISMATCH if either fails: bytes handed
 * out before the root is known are checked by their chunks only). A
 * follower waits at the end of the recorded chunks with a `stat` that the
 * server answers when more are recorded (or the blob is finalized); bytes
 * after the last chunk boundary come once their chunk ends. One `get` of
 * at most 1 MiB is fetched ahead of the one handed out: memory is bounded.
 */
export async function* remoteBytes(src: RemoteSource, name: string, o: RemoteStreamOptions = {}): AsyncGenerator<Uint8Array> {
  const { signal } = o;
  let st = await orAbort(src.stat(name), signal, name);
  if (!st.finalized && !o.follow) throw new CabError('ERR_BLOB_NOT_FINALIZED', `the sender's blob ${name} is not finalized`, { blob: name });
  const per = getBytes(src);
  const root = new MerkleHasher();
  let from = 0;
  let offset = 0;
  for (;;) {
    const page = await orAbort(src.list(name, from, MAX_LIST), signal, name);
    const todo = batches(page.chunks, per);
    let at = offset;
    const starts = todo.map((b) => {
      const s = at;
      for (const c of b) at += c[1];
      return s;
    });
    // A finalized blob's list is checked before its bytes are asked for: none past the size announced is handed out.
    if (st.finalized && at > st.size) throw new CabError('ERR_PROTOCOL', `the chunk list of ${name} runs past the ${st.size} bytes announced`, { blob: name });
    let next = todo.length > 0 ? fetchBatch(src, name, todo[0]!, starts[0]!, per) : undefined;
    for (let i = 0; i < todo.length; i++) {
      const mine = next!;
      next = i + 1 < todo.length ? fetchBatch(src, name, todo[i + 1]!, starts[i + 1]!, per) : undefined;
      next?.catch(() => {}); // awaited in turn; a consumer that stops early must not leave it unhandled
      for (const bytes of await orAbort(mine, signal, name)) {
        root.update(bytes);
        offset += bytes.length;
        yield bytes;
      }
    }
    from += page.chunks.length;
    if (!page.end) continue;
    if (st.finalized) {
      if (offset !== st.size) throw new CabError('ERR_PROTOCOL', `the chunk list of ${name} covers ${offset} bytes of ${st.size}`, { blob: name });
      const found = root.digest();
      if (!st.hash || !bytesEqual(found, st.hash)) {
        throw new CabError('ERR_HASH_MISMATCH', `blob ${name} from ${src.label} does not hash to its root`, { blob: name, expected: st.hash ? toHex(st.hash) : undefined, found: toHex(found) });
      }
      return;
    }
    // At the end of what is recorded: wait (on the server) for more, or the end.
    st = await orAbort(src.stat(name, offset), signal, name);
    // A server that does not wait (older ones answer at once): look again in a while, not in a loop.
    if (page.chunks.length === 0 && !st.finalized) await orAbort(new Promise((r) => setTimeout(r, FOLLOW_POLL_MS)), signal, name);
  }
}

/** remoteBytes as a Readable, with backpressure; `signal` destroys it with ERR_ABORTED. */
export function remoteStream(src: RemoteSource, name: string, o: RemoteStreamOptions = {}): Readable {
  throwIfAborted(o.signal, name);
  const hwm = o.highWaterMark ?? 2 * 1024 * 1024;
  if (!Number.isSafeInteger(hwm) || hwm < 1) throw new CabError('ERR_BAD_ARGUMENT', `highWaterMark must be a positive integer, not ${String(hwm)}`, { blob: name });
  const stream = Readable.from(remoteBytes(src, name, o), { objectMode: false, highWaterMark: hwm });
  const { signal } = o;
  if (signal) {
    const onAbort = () => stream.destroy(abortError(signal, name));
    signal.addEventListener('abort', onAbort, { once: true });
    stream.once('close', () => signal.removeEventListener('abort', onAbort));
  }
  return stream;
}
