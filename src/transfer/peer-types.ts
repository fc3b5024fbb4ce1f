import { CabError, ERROR_CODES, type ErrorCode } from '../errors.js';

export interface PushOptions {
  /** Cancels this push only: it rejects with ERR_ABORTED, the server is told to stop (`cancel`), other transfers go on. */
  signal?: AbortSignal;
}

export interface PushResult {
  name: string;
  /** The blob hash (BEP 52); hex in JSON. */
  hash: Uint8Array;
  /** Chunk bytes the server fetched from us. */
  received: number;
  /** Bytes the server took from its own blobs. */
  reused: number;
}

/** Turns an `err` message into a CabError with the remote's code when it is one of ours. */
export function remoteError(m: { code: string; msg: string }): CabError {
  const code = (Object.hasOwn(ERROR_CODES, m.code) ? m.code : 'ERR_REMOTE') as ErrorCode;
  // The peer's message already starts with its code: say it once ("ERR_AUTH: peer: this server needs a token").
  const msg = m.msg.startsWith(`${m.code}: `) ? m.msg.slice(m.code.length + 2) : m.msg;
  return new CabError(code, `peer: ${msg}`, { remote: true, found: m.code });
}
