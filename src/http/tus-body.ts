import type http from 'node:http';
import { MemoryLocker, type Lock, type Locker } from '@tus/server';
import { ERRORS } from '@tus/utils';
import { CabError } from '../errors.js';

/**
 * An upload request's body as Node gives it, and the signal of the tus
 * request it belongs to (aborted when the request ends early, or a later
 * request on the same upload has waited out tus's lock drain: the body is
 * then read no further, and what came is kept).
 */
export interface HeldBody {
  body: http.IncomingMessage;
  signal: AbortSignal;
}

/**
 * Hands each tus upload request's body to the data store straight from
 * Node's IncomingMessage. @tus/server reads a body as a web stream made by
 * `Readable.toWeb(req)`, which copies every piece and queues up to 16384 of
 * them whatever their size (most of a 1 GiB upload's garbage, and tens of
 * MiB in flight that a killed server loses), then turns it back into a Node
 * stream through two more. Here tus gets a request object of ours with no
 * body (it hands the data store an empty stream), and the body reaches the
 * data store by the upload's lock: whoever holds upload ID's lock is the
 * one request writing it (tus's rule), so `held(ID)` is its body.
 */
export class RequestBodies {
  /** Our request objects given to tus, and the Node request of each. */
  readonly #raw = new WeakMap<object, http.IncomingMessage>();
  /** Upload id -> the body of the request holding its lock. */
  readonly #held = new Map<string, HeldBody>();
  readonly #locks = new MemoryLocker();

  /**
   * The request to give @tus/server's `handleWeb`: what its handlers read
   * (method, url, headers; `runtime.node`, by which tus ends the request
   * when Node's fails), and no body.
   */
  request(req: http.IncomingMessage, res: http.ServerResponse): Request {
    const headers = new Headers();
    for (let i = 0; i < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
    const r = { method: req.method ?? 'GET', url: `http://${req.headers.host ?? 'localhost'}${req.url ?? '/'}`, headers, body: null, runtime: { name: 'node', node: { req, res } } };
    this.#raw.set(r, req);
    return r as unknown as Request;
  }

  /** tus's `locker` option: tus's own in-memory locks, and while a request holds one, its body is the upload's. */
  readonly locker = (req: Request): Locker => ({ newLock: (id) => this.#lock(id, this.#raw.get(req)) });

  #lock(id: string, body: http.IncomingMessage | undefined): Lock {
    const inner = this.#locks.newLock(id);
    let mine: HeldBody | undefined;
    return {
      lock: async (signal, cancelReq) => {
        await inner.lock(signal, cancelReq);
        if (body) this.#held.set(id, (mine = { body, signal }));
      },
      unlock: async () => {
        if (mine && this.#held.get(id) === mine) this.#held.delete(id);
        await inner.unlock();
      },
    };
  }

  /** The body of the request that holds upload `id`'s lock (the data store's write runs under it). */
  held(id: string): HeldBody | undefined {
    return this.#held.get(id);
  }
}

/**
 * The pieces of a request body as they arrive (Node's buffers, not copied),
 * with backpressure: what is not asked for stays in the socket. It ends at
 * the body's end, or early and cleanly when `signal` aborts; a body cut
 * short (the client went) throws Node's error. A body longer than `limit`
 * bytes throws tus's 413 at the piece that crosses it, which is not given.
 * A body that brings nothing for `stallMs` while it is waited for (0:
 * no limit) is cut: the request is destroyed (its client sees the
 * connection reset, and resumes) and ERR_IDLE_TIMEOUT thrown. Time the
 * store takes to use a piece does not count: the socket holds what comes
 * meanwhile.
 */
export async function* bodyPieces({ body, signal }: HeldBody, limit: number, stallMs = 0): AsyncGenerator<Buffer> {
  // One set of listeners for the whole body, not one per wait: a 1 GiB body is some 16,000 waits of 64 KiB.
  let wake: ((stalled: boolean) => void) | undefined;
  const on = () => wake?.(false);
  const timer = stallMs > 0 ? setTimeout(() => wake?.(true), stallMs) : undefined;
  body.on('readable', on).on('end', on).on('close', on).on('error', on);
  signal.addEventListener('abort', on);
  try {
    let n = 0;
    for (;;) {
      if (signal.aborted) return;
      const piece = body.read() as Buffer | null;
      if (piece !== null) {
        n += piece.length;
        if (n > limit) throw ERRORS.ERR_MAX_SIZE_EXCEEDED;
        yield piece;
        continue;
      }
      if (body.readableEnded) return;
      if (body.destroyed) throw body.errored ?? Object.assign(new Error('the request ended before its body did'), { code: 'ECONNRESET' });
      // Counted from here: the time the store took with the last piece is not the client's.
      timer?.refresh();
      const stalled = await new Promise<boolean>((resolve) => (wake = resolve));
      wake = undefined;
      if (stalled) {
        const e = new CabError('ERR_IDLE_TIMEOUT', `the upload body brought nothing for ${stallMs} ms: cut after ${n} bytes, which are kept`);
        body.destroy(e);
        throw e;
      }
    }
  } finally {
    clearTimeout(timer);
    body.off('readable', on).off('end', on).off('close', on).off('error', on);
    signal.removeEventListener('abort', on);
  }
}
