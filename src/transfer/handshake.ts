import crypto from 'node:crypto';
import { CabError } from '../errors.js';
import { HASH_NAME } from '../hash/sha256.js';
import type { ChunkerParams } from '../chunker/params.js';
import { PROTOCOL_VERSION, type Message, type Perm } from './messages.js';
import type { AuthGate } from './admission.js';

/**
 * The handshake's two messages and their checks (PROTOCOL.md, "Roles and
 * states"): hello carries the client's version, token, chunker and hash;
 * welcome the server's, with the permissions the token grants and limits.
 *
 * Each end checks the other's `v` and `hash`: a peer that names its chunks
 * with another hash shares no chunk name with us, so that is ERR_VERSION.
 * Other chunker parameters are allowed (the decoder has checked that they
 * are parameters a store could have): the receiver re-chunks what it
 * receives, only dedup between the two stores is smaller.
 */

type Hello = Extract<Message, { t: 'hello' }>;
type Welcome = Extract<Message, { t: 'welcome' }>;

function ours(chunker: ChunkerParams): ChunkerParams {
  return { min: chunker.min, avg: chunker.avg, max: chunker.max };
}

export function helloFor(chunker: ChunkerParams, token: string | undefined): Hello {
  return { t: 'hello', v: PROTOCOL_VERSION, ...(token ? { token } : {}), chunker: ours(chunker), hash: HASH_NAME };
}

export function welcomeFor(chunker: ChunkerParams, perms: Perm[], limits: { maxFrame: number; maxRequests: number }): Welcome {
  return { t: 'welcome', v: PROTOCOL_VERSION, chunker: ours(chunker), hash: HASH_NAME, perms, ...limits };
}

/** The other end's version and hash name must be ours: ERR_VERSION otherwise. */
export function checkPeer(m: Hello | Welcome): void {
  const who = m.t === 'hello' ? 'the client' : 'the server';
  if (m.v !== PROTOCOL_VERSION) throw new CabError('ERR_VERSION', `${who} speaks version ${m.v}, this end ${PROTOCOL_VERSION}`, { expected: PROTOCOL_VERSION, found: m.v });
  if (m.hash !== HASH_NAME) throw new CabError('ERR_VERSION', `${who} names chunks by ${JSON.stringify(m.hash)}, this end by ${HASH_NAME}`, { expected: HASH_NAME, found: m.hash });
}

export interface AuthOptions {
  /** Token -> permissions. */
  tokens?: Map<string, Perm[]>;
  /** Accept anyone, with read and write. */
  insecure?: boolean;
  /** Asked before a token from this address is checked, and told when one fails. */
  authGate?: AuthGate;
}

/** The permissions a hello's token grants; ERR_AUTH_LIMIT or ERR_AUTH otherwise. */
export function authenticate(o: AuthOptions, token: string | undefined): Perm[] {
  if (o.insecure) return ['read', 'write'];
  // Refused unchecked, so that a guesser learns nothing, even with the right token.
  if (o.authGate?.mayTry() === false) throw new CabError('ERR_AUTH_LIMIT', 'too many failed tokens from this address; try again later');
  const perms = token === undefined ? undefined : findToken(o.tokens ?? new Map(), token);
  if (perms) return perms;
  o.authGate?.failed();
  throw new CabError('ERR_AUTH', token === undefined ? 'this server needs a token' : 'unknown token');
}

/** Compares a token with every known one in constant time (per token). */
function findToken(tokens: Map<string, Perm[]>, token: string): Perm[] | undefined {
  const want = crypto.createHash('sha256').update(token).digest();
  let found: Perm[] | undefined;
  for (const [t, perms] of tokens) {
    const have = crypto.createHash('sha256').update(t).digest();
    if (crypto.timingSafeEqual(want, have)) found = perms;
  }
  return found;
}
