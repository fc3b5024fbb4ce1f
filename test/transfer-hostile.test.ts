// Hostile peers against a cabstore server over real WebSockets on
// 127.0.0.1: 1,000 random and mutated frames from raw `ws` connections
// (the server, in its own process, must survive with its store intact and
// keep serving a good client), and one test per limit or error: frames over
// maxFrame, too many outstanding requests, idle peers, missing blobs and
// chunks, invalid names, requests before hello, and a peer that hangs up in
// the middle of a push.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import {
  BlobStore,
  ERROR_CODES,
  connect,
  serve,
  decodeMessage,
  encodeMessage,
  isCabError,
  merkleRoot,
  toHex,
  type CabServer,
  type Message,
  type ServeOptions,
  PROTOCOL_VERSION,
} from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { tempDir, tempStore, putBlob, readAll, collect } from './helpers/store.js';
import { RawClient, startServerChild, killHard, MiB, KiB } from './helpers/transfer.js';
import { wsProxy } from './helpers/proxies.js';

const RW = 'hostile-rw';
const CHUNKER = { min: 16 * KiB, avg: 64 * KiB, max: 256 * KiB };
const ALPHA_BYTES = prngBytes('hostile alpha', 1 * MiB);
const BETA_BYTES = prngBytes('hostile beta', 3 * MiB);
const PARTIAL_BYTES = prngBytes('hostile partial', 500_000);
const ABSENT = 'f'.repeat(32);

function codeOf(e: unknown): string {
  return isCabError(e) ? e.code : `not a CabError: ${String(e)}`;
}

/** A store with two finalized blobs and one unfinalized one, in `dir/store`. */
async function hostileStore(dir: string): Promise<{ store: BlobStore; alpha: string; beta: string; partial: string }> {
  const store = await BlobStore.open(path.join(dir, 'store'));
  const alpha = await putBlob(store, ALPHA_BYTES);
  const beta = await putBlob(store, BETA_BYTES);
  const w = await store.newBlobWriter();
  await w.appendBytes(PARTIAL_BYTES);
  await w.closeWithoutFinalize();
  return { store, alpha, beta, partial: w.name };
}

async function serveT(t: ExecutionContext, store: BlobStore, options: Partial<ServeOptions> = {}): Promise<CabServer> {
  const srv = await serve(store, { tokens: { [RW]: ['read', 'write'] }, ...options });
  t.teardown(() => srv.close());
  return srv;
}

async function rawT(t: ExecutionContext, url: string, hello = true): Promise<RawClient> {
  const raw = await RawClient.open(url);
  t.teardown(() => raw.close());
  if (hello) t.like(await raw.hello(RW), { t: 'welcome' });
  return raw;
}

/** Sends a request and waits for the answer with its id. */
async function ask(raw: RawClient, m: Message): Promise<Message | 'closed' | 'timeout'> {
  const from = raw.heard.length;
  raw.send(m);
  return raw.waitFor((x) => 'id' in x && x.id === (m as { id: number }).id && x.t !== m.t, 5000, from);
}

// --- 1,000 hostile frames -----------------------------------------------------

type Kind = 'random' | 'mutated' | 'bytes-mutated' | 'text' | 'before-hello' | 'oversize' | 'structure';
interface Hostile {
  n: number;
  kind: Kind;
  frame: Buffer | string;
  what: string;
}

const REQUEST_ANSWER: Record<string, string> = { stat: 'statr', list: 'listr', fine: 'finer', get: 'data', push: 'done' };
const NAME = /^[0-9a-f]{32}$/;

/** What the server must do with a frame, decided by the protocol rules (decodeMessage is the pure, separately tested decoder). */
/** The blobs the server holds, and its chunks (SHA-256 hex -> size). */
interface Known {
  blobs: Set<string>;
  chunks: Map<string, number>;
}

type Expect =
  | { kind: 'fatal' } // err (no id) ERR_PROTOCOL, connection closed 1008
  | { kind: 'hangup' } // we sent err without id: the server closes
  | { kind: 'too-large' } // closed 1009
  | { kind: 'answer'; id: number; answer: string; code?: string } // answered, connection goes on
  | { kind: 'unanswered' }; // before hello: no data may come back

function expectFor(h: Hostile, known: Known): Expect {
  if (h.kind === 'oversize') return { kind: 'too-large' };
  if (h.kind === 'before-hello') return { kind: 'unanswered' };
  if (typeof h.frame === 'string') return { kind: 'fatal' };
  let m: Message;
  try {
    m = decodeMessage(h.frame);
  } catch {
    return { kind: 'fatal' };
  }
  if (m.t === 'err') return m.id === undefined ? { kind: 'hangup' } : { kind: 'fatal' };
  if (!(m.t in REQUEST_ANSWER)) return { kind: 'fatal' }; // a second hello, a welcome, answers to nothing
  const e: Expect = { kind: 'answer', id: (m as { id: number }).id, answer: REQUEST_ANSWER[m.t]! };
  if ('name' in m) {
    if (!NAME.test(m.name)) e.code = 'ERR_INVALID_BLOB_NAME';
    else if (m.t !== 'push' && !known.blobs.has(m.name)) e.code = 'ERR_NO_SUCH_BLOB';
  }
  // Chunk ranges are served in order: the first bad one names the error.
  const rangeProblem = (hash: Uint8Array, off: number, len: number, size?: number) => {
    const have = known.chunks.get(toHex(hash));
    if (have === undefined) return 'ERR_NO_SUCH_CHUNK';
    if ((size !== undefined && size !== have) || off + len > have) return 'ERR_ILLEGAL_POSITION';
    return undefined;
  };
  if (m.t === 'fine') e.code = rangeProblem(m.hash, 0, m.size, m.size);
  if (m.t === 'get') e.code = m.items.map(([hash, off, len]) => rangeProblem(hash, off, len)).find((x) => x !== undefined);
  if (e.code === undefined) delete e.code;
  return e;
}

const BAD_NAMES = [
  '../../etc/passwd',
  '..',
  '.',
  '/',
  '',
  '/etc/passwd',
  '..\\..\\windows\\win.ini',
  '%2e%2e%2f%2e%2e%2fetc%2fpasswd',
  '0'.repeat(31),
  '0'.repeat(33),
  'A'.repeat(32),
  'g'.repeat(32),
  `${'0'.repeat(30)}/.`,
  `${'0'.repeat(31)}\n`,
  '\u0000'.repeat(32),
  'é'.repeat(32),
  'x'.repeat(64),
  'x'.repeat(65),
  'x'.repeat(5000),
  ABSENT,
  'blob/ab/../../../../etc/passwd',
];

function hostileFrames(seed: number, count: number, ctx: { alpha: string; beta: string; partial: string; hash: Uint8Array; size: number }): Hostile[] {
  const rnd = prngInts(seed);
  const bytes = (n: number, tag: string) => prngBytes(`hostile ${seed} ${tag}`, n);
  const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)]!;
  const names = [ctx.alpha, ctx.beta, ctx.partial, ...BAD_NAMES];
  const weird = (n: number): unknown[] => [
    null,
    undefined,
    true,
    false,
    0,
    -1,
    -(2 ** 31),
    1.5,
    2 ** 31,
    2 ** 32,
    2 ** 32 + 1,
    2 ** 53,
    2 ** 53 + 2,
    Number.MAX_VALUE,
    -Number.MAX_VALUE,
    NaN,
    Infinity,
    -Infinity,
    2n ** 63n,
    2n ** 64n - 1n,
    -(2n ** 63n),
    '',
    'x',
    '1',
    pick(BAD_NAMES),
    'x'.repeat(100_000),
    [],
    [1, 2, 3],
    [[]],
    Array.from({ length: 5000 }, () => [ctx.hash, 0, 1]),
    {},
    { a: 1 },
    new Map([[1, 2]]),
    new Date(0),
    Buffer.alloc(0),
    Buffer.alloc(31),
    Buffer.alloc(33),
    bytes(32, `w${n}`),
    bytes(1000, `w${n}`),
  ];
  const templates = (id: number): Array<Record<string, unknown>> => [
    { t: 'stat', id, name: pick(names) },
    { t: 'stat', id, name: ctx.alpha },
    { t: 'list', id, name: pick(names), from: rnd(3) === 0 ? 100_000 : 0 },
    { t: 'fine', id, hash: ctx.hash, size: ctx.size },
    { t: 'fine', id, hash: bytes(32, `f${id}`), size: 1000 },
    { t: 'get', id, items: [[ctx.hash, 0, ctx.size]] },
    { t: 'get', id, items: [[ctx.hash, rnd(ctx.size), 1 + rnd(ctx.size)]] },
    { t: 'get', id, items: [] },
    { t: 'get', id, items: [[bytes(32, `g${id}`), 0, 10]] },
    { t: 'push', id, name: pick(names), size: rnd(1000), hash: bytes(32, `p${id}`) },
    { t: 'hello', v: PROTOCOL_VERSION, token: RW, chunker: CHUNKER, hash: 'sha256' },
    { t: 'welcome', v: PROTOCOL_VERSION, chunker: CHUNKER, hash: 'sha256', perms: ['read'], maxFrame: 1000, maxRequests: 4 },
    { t: 'statr', id, size: 10, fin: true, hash: ctx.hash },
    { t: 'listr', id, c: [[ctx.hash, ctx.size]], end: true },
    { t: 'finer', id, c: [[ctx.hash, ctx.size]] },
    { t: 'data', id, items: [Buffer.alloc(10)] },
    { t: 'done', id, received: 1, reused: 2 },
    { t: 'err', id, code: 'ERR_PROTOCOL', msg: 'hostile' },
    { t: 'err', code: 'ERR_PROTOCOL', msg: 'hostile, no id' },
  ];
  /** Changes that keep the message well-formed, so it reaches the serving code: odd but legal values. */
  const bend = (m: Record<string, unknown>, n: number): Record<string, unknown> => {
    const legal: Record<string, () => unknown> = {
      id: () => pick([0, 1, 2 ** 32 - 1, 2 ** 31 + rnd(1000)]),
      name: () => pick([...BAD_NAMES.filter((x) => x.length <= 64), ABSENT, ctx.partial, ctx.beta]),
      from: () => pick([0, 1, 4095, 4096, 2 ** 32 - 1, rnd(100)]),
      size: () => pick([0, 1, ctx.size - 1, ctx.size + 1, 64 * MiB, rnd(2 ** 20)]),
      hash: () => pick([bytes(32, `h${n}`), ctx.hash]),
      items: () => Array.from({ length: rnd(5) }, () => [pick([ctx.hash, bytes(32, `i${n}`)]), pick([0, 1, ctx.size, 64 * MiB]), pick([0, 1, ctx.size, 4 * MiB])]),
    };
    for (const key of Object.keys(m)) if (key in legal && rnd(2) === 0) m[key] = legal[key]!();
    return m;
  };
  const mutate = (m: Record<string, unknown>, n: number): Record<string, unknown> => {
    if (rnd(2) === 0) return bend(m, n);
    const ops = 1 + rnd(2);
    for (let k = 0; k < ops; k++) {
      const keys = Object.keys(m);
      const op = rnd(10);
      if (op < 5) {
        m[pick(keys)] = pick(weird(n));
      } else if (op < 6) {
        delete m[pick(keys)];
      } else if (op < 7) {
        // An own property even for __proto__ (a plain assignment would change the prototype instead).
        Object.defineProperty(m, pick(['extra', 'name', 'id', 'from', 'items', 'c', '__proto__', 'constructor']), { value: pick(weird(n)), enumerable: true, writable: true, configurable: true });
      } else if (op < 8) {
        m.t = pick<unknown>(['nope', 'STAT', 'Stat', '', 'toString', '__proto__', 'constructor', 'hasOwnProperty', 42, null, ['stat'], { t: 'stat' }, { toString: 'stat' }]);
      } else if (op < 9) {
        // inside a nested array or map
        for (const key of ['items', 'c', 'chunker']) {
          const v = m[key];
          if (Array.isArray(v) && v.length && Array.isArray(v[0])) {
            (v[0] as unknown[])[rnd(4)] = pick(weird(n));
            break;
          }
          if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)) {
            (v as Record<string, unknown>)[pick(['min', 'avg', 'max', 'x'])] = pick(weird(n));
            break;
          }
        }
      } else {
        m.name = pick(BAD_NAMES);
      }
    }
    return m;
  };
  const structures = (): Buffer[] => [
    Buffer.concat([Buffer.alloc(100_000, 0x91), Buffer.from([0xc0])]), // arrays nested 100,000 deep
    Buffer.concat([Buffer.alloc(50_000, 0x81), Buffer.from([0xc0])]), // maps nested (keys are maps)
    Buffer.from([0xdf, 0xff, 0xff, 0xff, 0xff]), // a map claiming 4 G entries
    Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]), // an array claiming 4 G items
    Buffer.from([0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]), // bin claiming 4 GiB
    Buffer.from([0xdb, 0xff, 0xff, 0xff, 0xff, 0x61]), // str claiming 4 GiB
    Buffer.from([0xd4, rnd(128), 0x00]), // fixext 1 of some type
    Buffer.from([0xc7, 0x05, 0x72, 1, 2, 3, 4, 5]), // ext 0x72 (msgpackr record definition)
    Buffer.from([0xd6, 0xff, 0xff, 0xff, 0xff, 0xff]), // timestamp ext
    Buffer.concat([Buffer.from([0x82, 0xa1, 0x74, 0xa4]), Buffer.from('stat'), Buffer.from([0xa2, 0x69, 0x64, 0xcb]), Buffer.from(new Float64Array([NaN]).buffer)]),
  ];
  const out: Hostile[] = [];
  const kinds: Array<[Kind, number]> = [
    ['random', 150],
    ['mutated', 560],
    ['bytes-mutated', 130],
    ['text', 50],
    ['before-hello', 80],
    ['oversize', 10],
    ['structure', 20],
  ];
  for (const [kind, k] of kinds) {
    for (let i = 0; i < k; i++) {
      const n = out.length;
      const id = 1 + n;
      let frame: Buffer | string;
      let what: string = kind;
      if (kind === 'random') {
        frame = bytes(rnd(3) === 0 ? rnd(8) : rnd(3000), `r${n}`);
      } else if (kind === 'mutated') {
        const ts = templates(id);
        // Mostly requests (they reach the serving code); the rest are other types.
        const m = rnd(10) < 7 ? ts[rnd(10)]! : ts[10 + rnd(ts.length - 10)]!;
        const mm = mutate(m, n);
        what = `mutated ${typeof mm.t === 'string' ? mm.t : typeof mm.t}`;
        frame = Buffer.from(encodeMessage(mm as Message));
      } else if (kind === 'bytes-mutated') {
        const base = Buffer.from(encodeMessage(templates(id)[rnd(10)] as Message));
        const op = rnd(4);
        if (op === 0) {
          frame = base.subarray(0, rnd(base.length));
          what = 'truncated';
        } else if (op === 1) {
          frame = Buffer.from(base);
          for (let f = 0; f < 1 + rnd(3); f++) frame[rnd(frame.length)] = rnd(256);
          what = 'bytes flipped';
        } else if (op === 2) {
          frame = Buffer.concat([base, bytes(1 + rnd(100), `a${n}`)]);
          what = 'garbage appended';
        } else {
          frame = Buffer.concat([base, base]);
          what = 'two messages in one frame';
        }
      } else if (kind === 'text') {
        frame = pick([JSON.stringify({ t: 'stat', id, name: ctx.alpha }), 'hello', '', bytes(50, `t${n}`).toString('latin1')]);
      } else if (kind === 'before-hello') {
        frame = Buffer.from(encodeMessage(templates(id)[pick([1, 2, 3, 5, 7])] as Message));
      } else if (kind === 'oversize') {
        frame = bytes(4 * MiB + 64 * KiB + 1 + rnd(1000), `o${n}`);
      } else {
        frame = structures()[i % 10]!;
      }
      out.push({ n, kind, frame, what });
    }
  }
  return out;
}

interface Outcome {
  h: Hostile;
  expect: Expect;
  /** The probe after the frame was answered: the connection goes on. */
  alive: boolean;
  hung: boolean;
  answer?: Message;
  heard: Message[];
  closed?: { code: number; reason: string };
}

const PROBE_BASE = 3_000_000_000;

async function throwFrames(url: string, frames: Hostile[], known: Known, alpha: string): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  let raw: RawClient | undefined;
  for (const h of frames) {
    const expect = expectFor(h, known);
    if (h.kind === 'before-hello') {
      // A request before hello, then a hello with a wrong token: the server hangs up, and must not have served it.
      const r = await RawClient.open(url);
      r.send(h.frame);
      r.send({ t: 'hello', v: PROTOCOL_VERSION, token: 'wrong', chunker: CHUNKER, hash: 'sha256' });
      const gone = await r.waitClosed(5000);
      outcomes.push({ h, expect, alive: !gone, hung: !gone, heard: r.heard.flatMap((x) => ('m' in x ? [x.m] : [])), closed: r.closed });
      r.close();
      continue;
    }
    if (!raw || !raw.isOpen) {
      raw?.close();
      raw = await RawClient.open(url);
      const w = await raw.hello(RW);
      if (typeof w !== 'object' || w.t !== 'welcome') throw new Error(`no welcome: ${JSON.stringify(w)}`);
    }
    const from = raw.heard.length;
    raw.send(h.frame);
    const probe = PROBE_BASE + h.n;
    raw.send({ t: 'stat', id: probe, name: alpha });
    const p = await raw.waitFor((m) => m.t === 'statr' && m.id === probe, 5000, from);
    const o: Outcome = { h, expect, alive: typeof p === 'object', hung: p === 'timeout', heard: [] };
    if (o.alive && expect.kind === 'answer') {
      const a = await raw.waitFor((m) => (m.t === 'err' || m.t === expect.answer) && 'id' in m && m.id === expect.id, 5000, from);
      if (typeof a === 'object') o.answer = a;
      else o.hung = a === 'timeout';
    }
    o.heard = raw.heard.slice(from).flatMap((x) => ('m' in x ? [x.m] : []));
    o.closed = raw.closed;
    outcomes.push(o);
    if (!o.alive) {
      raw.close();
      raw = undefined;
    }
  }
  raw?.close();
  return outcomes;
}

test.serial('1,000 random and mutated frames over many raw connections: the server survives, answers by the rules, its store stays intact, a good client then pulls', async (t) => {
  const dir = tempDir(t);
  const { store, alpha, beta, partial } = await hostileStore(dir);
  const chunks = await collect(store.blobChunkStream(alpha));
  const known: Known = {
    blobs: new Set([alpha, beta, partial]),
    chunks: new Map([...chunks, ...(await collect(store.blobChunkStream(beta)))].map((c) => [toHex(c.hash), c.size])),
  };
  const before = new Map<string, { size: number; finalized: boolean; hash?: string }>();
  for await (const name of store.listBlobIds()) {
    const r = await store.newBlobReader(name);
    before.set(name, { size: r.size, finalized: r.isFinalized, ...(r.hash ? { hash: toHex(r.hash) } : {}) });
    await r.close();
  }
  await store.close();

  // The server runs in its own process: surviving means that process is still there.
  const { child, url } = await startServerChild(path.join(dir, 'store'), 0, RW);
  t.teardown(() => killHard(child));
  const frames = hostileFrames(1000, 1000, { alpha, beta, partial, hash: chunks[0]!.hash, size: chunks[0]!.size });
  t.is(frames.length, 1000);
  const workers = 4;
  const outcomes = (await Promise.all(Array.from({ length: workers }, (_, w) => throwFrames(url, frames.filter((f) => f.n % workers === w), known, alpha)))).flat();
  t.is(outcomes.length, 1000);

  const tally = new Map<string, number>();
  const problems: string[] = [];
  let unlisted = 0;
  const problem = (o: Outcome, why: string) => {
    if (problems.length < 30) problems.push(`#${o.h.n} ${o.h.what} (${typeof o.h.frame === 'string' ? 'text' : o.h.frame.subarray(0, 48).toString('hex')}): ${why}; heard ${JSON.stringify(o.heard.map((m) => (m.t === 'err' ? `${m.t} ${m.id ?? '-'} ${m.code}` : m.t)))}, closed ${JSON.stringify(o.closed)}`);
    else unlisted++;
  };
  for (const o of outcomes) {
    const e = o.expect;
    tally.set(e.kind, (tally.get(e.kind) ?? 0) + 1);
    for (const m of o.heard) {
      if (m.t === 'err' && !Object.hasOwn(ERROR_CODES, m.code)) problem(o, `an error code outside ERROR_CODES: ${m.code}`);
    }
    if (o.hung) {
      problem(o, 'no answer and no close within 5 s');
      continue;
    }
    switch (e.kind) {
      case 'fatal':
        if (o.alive) problem(o, 'a malformed or out-of-place frame was let through');
        else if (o.closed?.code !== 1008) problem(o, `closed with ${o.closed?.code}, not 1008`);
        else if (!o.heard.some((m) => m.t === 'err' && m.id === undefined && m.code === 'ERR_PROTOCOL')) problem(o, 'closed without err ERR_PROTOCOL');
        break;
      case 'hangup':
        if (o.alive) problem(o, 'our err without id did not end the connection');
        break;
      case 'too-large':
        if (o.alive || o.closed?.code !== 1009) problem(o, `an oversize frame: closed ${o.closed?.code}, not 1009`);
        break;
      case 'unanswered':
        if (o.heard.some((m) => m.t !== 'err')) problem(o, 'served before authentication');
        if (o.alive) problem(o, 'a bad hello did not end the connection');
        break;
      case 'answer':
        if (!o.alive) problem(o, 'a well-formed request cost the connection');
        else if (!o.answer) problem(o, `no answer to request ${e.id}`);
        else if (o.answer.t === 'err' && e.code && o.answer.code !== e.code) problem(o, `answered ${o.answer.code}, expected ${e.code}`);
        else if (o.answer.t !== 'err' && e.code) problem(o, `answered ${o.answer.t}, expected err ${e.code}`);
        else if (o.answer.t !== 'err' && o.answer.t !== e.answer) problem(o, `answered ${o.answer.t}, expected ${e.answer}`);
        break;
    }
  }
  if (unlisted) problems.push(`... and ${unlisted} more`);
  t.log(`expected outcomes: ${JSON.stringify(Object.fromEntries(tally))}`);
  t.deepEqual(problems, [], 'every frame handled by the rules');
  t.true((tally.get('answer') ?? 0) >= 200, 'a good share of the frames were well-formed requests that reached the serving code');
  t.true((tally.get('fatal') ?? 0) >= 300);

  t.is(child.exitCode, null, 'the server process is alive');
  t.is(child.signalCode, null);
  // A good client pulls from it.
  const mine = await tempStore(t);
  const c = await connect(mine, url, { token: RW });
  t.teardown(() => c.close());
  const st = await c.pull(beta);
  t.is(toHex(st.hash), toHex(merkleRoot(BETA_BYTES)));
  t.true((await readAll(mine, beta)).equals(BETA_BYTES));
  await c.close();

  // Its store is intact: the same blobs, the same bytes, fsck clean; nothing written beside it.
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  t.is(await exited, 0, 'the server shuts down cleanly');
  const after = await BlobStore.open(path.join(dir, 'store'));
  t.teardown(() => after.close());
  const report = await after.fsck({ verify: true });
  t.deepEqual(report.problems, []);
  const now = new Map<string, { size: number; finalized: boolean; hash?: string }>();
  for await (const name of after.listBlobIds()) {
    const r = await after.newBlobReader(name);
    now.set(name, { size: r.size, finalized: r.isFinalized, ...(r.hash ? { hash: toHex(r.hash) } : {}) });
    await r.close();
  }
  t.deepEqual(now, before);
  t.true((await readAll(after, alpha)).equals(ALPHA_BYTES));
  t.true((await readAll(after, beta)).equals(BETA_BYTES));
  t.true((await readAll(after, partial)).equals(PARTIAL_BYTES));
  t.deepEqual(fs.readdirSync(dir), ['store'], 'nothing was created outside the store');
  t.is(({} as Record<string, unknown>).polluted, undefined);
});

test('decoding a map with a __proto__ key pollutes nothing', (t) => {
  const frame = Buffer.from(encodeMessage(JSON.parse('{"t":"stat","id":1,"name":"00000000000000000000000000000000","__proto__":{"polluted":1}}') as Message));
  const m = decodeMessage(frame);
  t.is(m.t, 'stat');
  t.is(({} as Record<string, unknown>).polluted, undefined);
  t.is((m as unknown as Record<string, unknown>).polluted, undefined);
});

test('a message whose type is a map with a toString field is ERR_PROTOCOL, like any other bad type', (t) => {
  // The decoder must be total: whatever MessagePack holds, it returns a message or throws ERR_PROTOCOL.
  for (const type of [{ toString: 'stat' }, { valueOf: 1, toString: 2 }, { t: 'stat' }, ['stat'], 42, null]) {
    const frame = Buffer.from(encodeMessage({ t: type, id: 1, name: ABSENT } as unknown as Message));
    const e = t.throws(() => decodeMessage(frame));
    t.is(codeOf(e), 'ERR_PROTOCOL', `t = ${JSON.stringify(type)}`);
  }
});

// --- one limit or error at a time --------------------------------------------

test('a frame over maxFrame closes the connection with 1009; one of exactly maxFrame is served; others are unaffected', async (t) => {
  const { store, alpha } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  const maxFrame = 64 * KiB;
  const srv = await serveT(t, store, { maxFrame });
  const bystander = await rawT(t, srv.url);
  // A stat padded with an unknown field to exactly maxFrame bytes: served.
  const exact = await rawT(t, srv.url);
  const base = { t: 'stat', id: 5, name: alpha, pad: '' };
  const overhead = encodeMessage(base as Message).length;
  let padded = Buffer.from(encodeMessage({ ...base, pad: 'x'.repeat(maxFrame - overhead - 2) } as Message));
  padded = Buffer.from(encodeMessage({ ...base, pad: 'x'.repeat(maxFrame - overhead - 2 - (padded.length - maxFrame)) } as Message));
  t.is(padded.length, maxFrame);
  exact.send(padded);
  t.like(await exact.waitFor((m) => m.t === 'statr' || m.t === 'err'), { t: 'statr', id: 5, size: ALPHA_BYTES.length });
  // One byte more: closed with 1009.
  const over = await rawT(t, srv.url);
  over.send(Buffer.concat([padded, Buffer.from([0])]));
  t.true(await over.waitClosed());
  t.is(over.closed!.code, 1009);
  t.like(await ask(bystander, { t: 'stat', id: 9, name: alpha }), { t: 'statr', id: 9 });
  t.true(exact.isOpen);
});

test('more outstanding requests than maxRequests: ERR_TOO_MANY_REQUESTS and closed; exactly maxRequests is fine; others unaffected', async (t) => {
  const { store, alpha, beta } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  const maxRequests = 4;
  const srv = await serveT(t, store, { maxRequests });
  const chunks = await collect(store.blobChunkStream(beta));
  const get = (id: number): Message => ({ t: 'get', id, items: chunks.slice(0, 12).map((c) => [c.hash, 0, c.size]) });
  // Exactly the limit, all at once: all answered.
  const within = await rawT(t, srv.url);
  for (let i = 1; i <= maxRequests; i++) within.send(get(i));
  for (let i = 1; i <= maxRequests; i++) t.like(await within.waitFor((m) => m.t === 'data' && m.id === i), { t: 'data', id: i });
  t.true(within.isOpen);
  // Ten times the limit: cut off.
  const flood = await rawT(t, srv.url);
  for (let i = 1; i <= 10 * maxRequests; i++) flood.send(get(i));
  t.true(await flood.waitClosed());
  t.deepEqual(flood.fatalErrors.map((e) => e.code), ['ERR_TOO_MANY_REQUESTS']);
  t.is(flood.closed!.code, 1008);
  t.like(await ask(within, { t: 'stat', id: 99, name: alpha }), { t: 'statr', id: 99 });
  const c = await connect(await tempStore(t), srv.url, { token: RW });
  t.teardown(() => c.close());
  t.is((await c.pull(beta)).receivedBytes, BETA_BYTES.length);
});

test.serial('an idle peer is closed after idleTimeoutMs with ERR_IDLE_TIMEOUT; a busy one is not', async (t) => {
  const { store, alpha } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  // Serial, with a busy peer talking every 50 ms against a 400 ms limit: margin for a loaded machine.
  const srv = await serveT(t, store, { idleTimeoutMs: 400 });
  const idle = await rawT(t, srv.url);
  const silent = await rawT(t, srv.url, false); // never says hello
  const busy = await rawT(t, srv.url);
  const client = await connect(await tempStore(t), srv.url, { token: RW });
  t.teardown(() => client.close());
  await new Promise((r) => setTimeout(r, 100));
  t.true(idle.isOpen && silent.isOpen, 'not closed early');
  for (let i = 0; i < 24; i++) {
    t.like(await ask(busy, { t: 'stat', id: 100 + i, name: alpha }), { t: 'statr' });
    await new Promise((r) => setTimeout(r, 50));
  }
  t.true(busy.isOpen, 'a peer that keeps talking stays');
  t.true(await idle.waitClosed());
  t.deepEqual(idle.fatalErrors.map((e) => e.code), ['ERR_IDLE_TIMEOUT']);
  t.is(idle.closed!.code, 1001);
  t.true(await silent.waitClosed());
  t.deepEqual(silent.fatalErrors.map((e) => e.code), ['ERR_IDLE_TIMEOUT']);
  t.is(codeOf(await t.throwsAsync(client.stat(alpha))), 'ERR_IDLE_TIMEOUT', 'the client learns why it was dropped');
});

test('requests for missing blobs and chunks get errors with codes, and the connection keeps working', async (t) => {
  const { store, alpha, beta, partial } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  const srv = await serveT(t, store);
  const [c0] = await collect(store.blobChunkStream(alpha));
  const raw = await rawT(t, srv.url);
  const nowhere = new Uint8Array(32).fill(7);
  const cases: Array<[Message, string]> = [
    [{ t: 'stat', id: 1, name: ABSENT }, 'ERR_NO_SUCH_BLOB'],
    [{ t: 'list', id: 2, name: ABSENT, from: 0 }, 'ERR_NO_SUCH_BLOB'],
    [{ t: 'match', id: 3, name: partial, n: 0, digest: new Uint8Array(32) }, 'ERR_BLOB_NOT_FINALIZED'],
    [{ t: 'get', id: 4, items: [[nowhere, 0, 10]] }, 'ERR_NO_SUCH_CHUNK'],
    [{ t: 'get', id: 5, items: [[c0!.hash, 0, 10], [nowhere, 0, 10]] }, 'ERR_NO_SUCH_CHUNK'],
    [{ t: 'fine', id: 6, hash: nowhere, size: 1000 }, 'ERR_NO_SUCH_CHUNK'],
    [{ t: 'get', id: 7, items: [[c0!.hash, 0, c0!.size + 1]] }, 'ERR_ILLEGAL_POSITION'],
    [{ t: 'get', id: 8, items: [[c0!.hash, c0!.size, 1]] }, 'ERR_ILLEGAL_POSITION'],
    [{ t: 'fine', id: 9, hash: c0!.hash, size: c0!.size + 1 }, 'ERR_ILLEGAL_POSITION'],
  ];
  for (const [m, code] of cases) t.like(await ask(raw, m), { t: 'err', id: (m as { id: number }).id, code }, `${m.t} -> ${code}`);
  t.like(await ask(raw, { t: 'get', id: 20, items: [[c0!.hash, 0, c0!.size]] }), { t: 'data', id: 20 });
  t.like(await ask(raw, { t: 'stat', id: 21, name: partial }), { t: 'statr', id: 21, fin: false, size: PARTIAL_BYTES.length });
  // A blob being written: its chunks recorded so far are listed (for a follower; docs/PROTOCOL.md).
  t.like(await ask(raw, { t: 'list', id: 22, name: partial, from: 0 }), { t: 'listr', id: 22, end: true });
  t.true(raw.isOpen);
  t.deepEqual(raw.fatalErrors, []);
  // Through the client API.
  const mine = await tempStore(t);
  const c = await connect(mine, srv.url, { token: RW });
  t.teardown(() => c.close());
  t.is(codeOf(await t.throwsAsync(c.stat(ABSENT))), 'ERR_NO_SUCH_BLOB');
  t.is(codeOf(await t.throwsAsync(c.pull(ABSENT))), 'ERR_NO_SUCH_BLOB');
  t.is(codeOf(await t.throwsAsync(c.pull(partial))), 'ERR_BLOB_NOT_FINALIZED');
  t.deepEqual(await collect(mine.listBlobIds()), [], 'failed pulls leave nothing behind');
  await c.pull(alpha);
  t.true((await readAll(mine, alpha)).equals(ALPHA_BYTES));
});

test('invalid blob names get ERR_INVALID_BLOB_NAME, touch nothing, and the connection keeps working', async (t) => {
  const dir = tempDir(t);
  const { store, alpha } = await hostileStore(dir);
  t.teardown(() => store.close());
  const srv = await serveT(t, store);
  const raw = await rawT(t, srv.url);
  let id = 1;
  for (const name of BAD_NAMES.filter((n) => n.length <= 64 && !NAME.test(n))) {
    for (const m of [
      { t: 'stat', id: id++, name },
      { t: 'list', id: id++, name, from: 0 },
      { t: 'push', id: id++, name, size: 10, hash: new Uint8Array(32) },
    ] as Message[]) {
      t.like(await ask(raw, m), { t: 'err', code: 'ERR_INVALID_BLOB_NAME' }, `${m.t} ${JSON.stringify(name)}`);
    }
  }
  t.like(await ask(raw, { t: 'stat', id: id++, name: alpha }), { t: 'statr' });
  const mine = await tempStore(t);
  const c = await connect(mine, srv.url, { token: RW });
  t.teardown(() => c.close());
  let thrown: unknown;
  try {
    void c.pull('../../etc/passwd').catch(() => {});
  } catch (e) {
    thrown = e;
  }
  t.is(thrown, undefined, 'pull reports a bad name by rejecting its promise, not by throwing synchronously');
  t.is(codeOf(await t.throwsAsync(async () => c.pull('../../etc/passwd'))), 'ERR_INVALID_BLOB_NAME');
  t.is(codeOf(await t.throwsAsync(c.stat('../../etc/passwd'))), 'ERR_INVALID_BLOB_NAME');
  t.is(codeOf(await t.throwsAsync(c.push('../../etc/passwd'))), 'ERR_INVALID_BLOB_NAME');
  t.deepEqual(fs.readdirSync(dir), ['store']);
  t.deepEqual((await collect(store.listBlobIds())).length, 3);
});

test('requests before hello are a protocol error: ERR_PROTOCOL and closed (PROTOCOL.md), even a flood of them', async (t) => {
  const { store, alpha } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  const srv = await serveT(t, store, { maxRequests: 4 });
  const early = await rawT(t, srv.url, false);
  early.send({ t: 'stat', id: 1, name: alpha });
  t.true(await early.waitClosed(2000), 'closed');
  t.deepEqual(early.fatalErrors.map((e) => e.code), ['ERR_PROTOCOL']);
  t.false(early.heard.some((h) => 'm' in h && h.m.t === 'statr'), 'and not served');
  // Requests queued before hello are not bounded by maxRequests unless refused outright.
  const flood = await rawT(t, srv.url, false);
  for (let i = 1; i <= 1000; i++) flood.send({ t: 'stat', id: i, name: alpha });
  t.true(await flood.waitClosed(2000), 'a flood before hello is cut off');
});

test('welcome announces the limits the server enforces, and a push to a server with a small maxFrame works', async (t) => {
  const { store } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  const maxFrame = 512 * KiB;
  const srv = await serveT(t, store, { maxFrame, maxRequests: 7 });
  const raw = await rawT(t, srv.url, false);
  const w = await raw.hello(RW);
  t.like(w, { t: 'welcome', maxRequests: 7 });
  t.is((w as Extract<Message, { t: 'welcome' }>).maxFrame, maxFrame, 'welcome.maxFrame is the configured limit');
  // The server asks for chunks in `get`s whose `data` answers it will accept.
  const mine = await tempStore(t);
  const bytes = prngBytes('small frames', 3 * MiB);
  const name = await putBlob(mine, bytes);
  const c = await connect(mine, srv.url, { token: RW });
  t.teardown(() => c.close());
  const r = await c.push(name).catch((e: unknown) => codeOf(e));
  t.like(r, { received: bytes.length, reused: 0 }, 'a push to a server with maxFrame 512 KiB');
  // And the other way: a client that accepts frames of at most 512 KiB pulls.
  const there = await putBlob(store, prngBytes('small frames back', 3 * MiB));
  const small = await connect(await tempStore(t), srv.url, { token: RW, maxFrame });
  t.teardown(() => small.close());
  const p = await small.pull(there).then((st) => st.receivedBytes, (e: unknown) => codeOf(e));
  t.is(p, 3 * MiB, 'a pull by a client with maxFrame 512 KiB');
});

test.serial('a client that hangs up in the middle of its push does not take the server down', async (t) => {
  const dir = tempDir(t);
  const root = path.join(dir, 'store');
  await (await BlobStore.open(root)).close();
  const { child, url, stderr } = await startServerChild(root, 0, RW);
  t.teardown(() => killHard(child));
  const mine = await tempStore(t);
  const bytes = prngBytes('hang up mid push', 48 * MiB);
  const name = await putBlob(mine, bytes);
  const rnd = prngInts(77);
  let locked = 0;
  for (let i = 0; i < 8 && child.exitCode === null; i++) {
    // The client's side of the conversation goes through a proxy that, after `at` bytes of it,
    // hangs up on the server the way a client does: a close frame (1000), then nothing more.
    // Past the first `data` answer (up to 4 MiB), so the server is busy with it when the close comes;
    // each push delivers less than 7 MiB of the 48, so none completes.
    const at = 4 * MiB + 1 + rnd(3 * MiB);
    let sent = 0;
    const hangUp = await wsProxy(url, {
      toServer: (frame, _binary, link) => {
        if (sent >= at) return null;
        sent += frame.length;
        if (sent >= at) {
          link.up.close(1000, 'bye');
          return null;
        }
        return frame;
      },
    });
    let got: string;
    try {
      const c = await connect(mine, hangUp.url, { token: RW });
      got = await c.push(name).then((r) => JSON.stringify(r), (e: unknown) => codeOf(e));
      await c.close();
    } catch (e) {
      got = `connect: ${codeOf(e)}`;
    } finally {
      await hangUp.close();
    }
    if (got === 'ERR_BLOB_LOCKED' && locked < 100) {
      // The server is still winding down the receive of the last push, which holds the blob. Again.
      locked++;
      i--;
      await new Promise((r) => setTimeout(r, 30));
      continue;
    }
    t.is(got, 'ERR_CONNECTION', `push ${i} (hung up after ${at} bytes) fails with ERR_CONNECTION`);
  }
  t.log(`pushes refused with ERR_BLOB_LOCKED right after a hang-up: ${locked}`);
  await new Promise((r) => setTimeout(r, 200));
  if (child.exitCode !== null) t.log(`the server died (${child.exitCode}): ${stderr().split('\n').slice(0, 8).join('\n')}`);
  t.is(child.exitCode, null, 'the server process is still alive');
  t.is(child.signalCode, null);
  if (child.exitCode === null) {
    const c = await connect(mine, url, { token: RW });
    t.teardown(() => c.close());
    const r = await c.push(name);
    t.true(r.received < bytes.length, 'the push resumes what the hung-up ones left');
  }
});

test('an error code from the peer that is not one of ours becomes ERR_REMOTE (even one named like an Object property)', async (t) => {
  const { store } = await hostileStore(tempDir(t));
  t.teardown(() => store.close());
  const srv = await serveT(t, store);
  const codes = ['ERR_MADE_UP', 'constructor', 'toString', '__proto__', 'hasOwnProperty'];
  let next = 0;
  const liar = await wsProxy(srv.url, {
    toClient: (frame) => {
      const m = decodeMessage(frame);
      if (m.t !== 'err' || m.id === undefined) return frame;
      return Buffer.from(encodeMessage({ ...m, code: codes[next++ % codes.length]! }));
    },
  });
  t.teardown(() => liar.close());
  const c = await connect(await tempStore(t), liar.url, { token: RW });
  t.teardown(() => c.close());
  for (const code of codes) {
    const e = await t.throwsAsync(c.stat(ABSENT));
    t.is(codeOf(e), 'ERR_REMOTE', `a peer's code ${JSON.stringify(code)}`);
    t.true(Object.hasOwn(ERROR_CODES, codeOf(e)));
  }
});
