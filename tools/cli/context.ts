// What every command shares: the program and its global options, output
// (text or --json), and opening the store for reading or for writing.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command, CommanderError } from 'commander';
import { CabError, inputFileError, ioError, isCabError } from '../../src/errors.js';
import type { BlobStore, StoreOptions } from '../../src/store.js';

export const program = new Command();

// The command being run, known before its own options and arguments are parsed: bad usage shows its help.
let active: Command | undefined;
program.hook('preSubcommand', (_program, sub) => {
  active = sub;
});

/** The help for bad usage: the command's being run, else the program's. */
export const usageHelp = (): string => (active ?? program).helpInformation();

/**
 * The library's parts, each loaded by the first command that needs it:
 * `--help` loads none of them, `put` no WebSocket code, and `pull` no
 * bundle code. lmdb, ws and some 70 modules take longer to load than Node
 * takes to start (issue 15).
 */
export const lib = {
  store: () => import('../../src/store.js'),
  /** A connection opened before the store (light: no store code), for connect to take over. */
  dial: () => import('../../src/transfer/dial.js'),
  /** A client's session (connect); the server's code stays out (serve loads it, with the HTTP face). */
  net: () => import('../../src/transfer/connect.js'),
  /** serve: the transfer protocol and the HTTP face on one port. */
  http: () => import('../../src/http/serve.js'),
  bundle: () => import('../../src/transfer/bundle.js'),
  compare: () => import('../../src/blob/compare.js'),
  /** What put and resume read. */
  source: () => import('../source.js'),
  durable: () => import('../../src/disk/durable.js'),
};

/**
 * For commands that write blobs (and serve, which receives pushes): starts
 * the hashing thread before the store's code loads, so that the two
 * start-ups overlap (a small pull is 30-40 ms sooner).
 */
export async function startHashing(): Promise<void> {
  (await import('../../src/hash/pool.js')).startHashThread();
}

/**
 * The bucket of a bucket-backed store: --s3 s3://bucket/prefix with
 * --s3-endpoint URL (else $CABSTORE_S3_ENDPOINT); credentials from
 * AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Without --s3, none: a store
 * that was first opened on a bucket remembers it.
 */
export async function storeOptions(): Promise<Pick<StoreOptions, 'objectStore'>> {
  const o = program.opts<{ s3?: string; s3Endpoint?: string }>();
  if (o.s3 === undefined) {
    if (o.s3Endpoint !== undefined) throw new CommanderError(2, 'cabstore.usage', 'error: --s3-endpoint needs --s3 s3://bucket/prefix');
    return {};
  }
  const endpoint = o.s3Endpoint ?? process.env.CABSTORE_S3_ENDPOINT;
  if (!endpoint) throw new CommanderError(2, 'cabstore.usage', 'error: --s3 needs --s3-endpoint URL (or $CABSTORE_S3_ENDPOINT)');
  const { parseS3Url } = await import('../../src/bucket/keys.js');
  const [bucket, prefix] = parseS3Url(o.s3);
  return { objectStore: { endpoint, bucket, prefix } };
}

/** The store directory as the user gave it: --store, else $CABSTORE_DIR, else ./.cabstore. */
export const storeDir = (): string => program.opts<{ store?: string }>().store ?? process.env.CABSTORE_DIR ?? './.cabstore';
export const json = (): boolean => program.opts<{ json?: boolean }>().json === true;
/** Prints `text`, or `obj` as JSON with --json. */
export const out = (text: string, obj: unknown): void => console.log(json() ? JSON.stringify(obj, replacer) : text);

/** Bytes as hex, as the library's toHex, without loading node:crypto for --help. */
export const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** Hashes and other bytes as hex. A Buffer reaches a replacer already turned into {type, data} by its toJSON, so look at the holder. */
export function replacer(this: Record<string, unknown>, k: string, v: unknown): unknown {
  const raw = this[k];
  return raw instanceof Uint8Array ? hex(raw) : v;
}

/** An argument as a POSIX shell reads it back: bare when safe, else in single quotes. */
export function shellWord(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** `cabstore` and the --store the user gave, to print a command they can run next. */
export function cabstoreCommand(...args: string[]): string {
  const store = program.opts<{ store?: string }>().store;
  return ['cabstore', ...(store === undefined ? [] : ['--store', store]), ...args].map(shellWord).join(' ');
}

/**
 * Opens the store. Reading commands (`write` false) need one there already;
 * writing commands make one in a new or empty directory. Neither turns a
 * directory of other files into a store.
 */
export async function openStore(write: boolean, options: Pick<StoreOptions, 'catchUpIndex'> = {}): Promise<BlobStore> {
  const dir = storeDir();
  const { BlobStore } = await lib.store();
  try {
    return await BlobStore.open(dir, { ...options, ...(await storeOptions()), create: write });
  } catch (e) {
    if (!isCabError(e, 'ERR_BAD_STORE') || e.data.reason !== 'absent') throw e;
    throw new CabError('ERR_BAD_STORE', `no cabstore store at ${e.data.path}; \`cabstore init ${shellWord(dir)}\` or a writing command (put, pull, import) makes one`, e.data, { cause: e });
  }
}

/** Runs `fn` on the store, closing it after. */
export async function withStore<T>(write: boolean, fn: (s: BlobStore) => Promise<T>, options?: Pick<StoreOptions, 'catchUpIndex'>): Promise<T> {
  const s = await openStore(write, options);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

/**
 * Runs `fn` on the store, for a command that makes it if there is none: but
 * then only once `first` has passed, so that a command bound to fail (a
 * server that is down, a blob it lacks) leaves no store behind at a path
 * that may be mistyped.
 */
export async function withStoreMadeAfter<T>(first: () => Promise<void>, fn: (s: BlobStore) => Promise<T>): Promise<T> {
  const { BlobStore } = await lib.store();
  let s: BlobStore;
  try {
    s = await BlobStore.open(storeDir(), { ...(await storeOptions()), create: false });
  } catch (e) {
    if (!isCabError(e, 'ERR_BAD_STORE') || e.data.reason !== 'absent') throw e;
    await first();
    s = await openStore(true);
  }
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

/**
 * Runs `fn` on a throwaway store in a new temp directory, removed after: a
 * connection needs a store, and `stat URL NAME` needs none here.
 */
export async function withScratchStore<T>(fn: (s: BlobStore) => Promise<T>): Promise<T> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'cabstore-scratch-')).catch((e: unknown) => {
    throw ioError(e, 'making a temp directory', { path: os.tmpdir() });
  });
  try {
    const { BlobStore } = await lib.store();
    const s = await BlobStore.open(dir);
    try {
      return await fn(s);
    } finally {
      await s.close();
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/** A small file the user names (a token file): ERR_NO_SUCH_FILE if it cannot be read. */
export function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw inputFileError(e, file);
  }
}

/** The token for a server: the first word of --token-file's first line, else $CABSTORE_TOKEN. */
export function token(opts: { tokenFile?: string }): string | undefined {
  // The first word: a server's token file ("TOKEN read,write") serves a client as it is.
  if (opts.tokenFile) return readText(opts.tokenFile).split('\n')[0]!.trim().split(/\s+/)[0];
  return process.env.CABSTORE_TOKEN;
}

/** The end of a command stopped by a signal; `message` says what was kept and how to go on. */
export class Interrupted extends Error {
  readonly signal: NodeJS.Signals;
  constructor(signal: NodeJS.Signals, message: string) {
    super(message);
    this.signal = signal;
  }
}

/**
 * Runs `fn` with a signal that SIGINT or SIGTERM fires; a second signal
 * ends the process at once. An Interrupted error is then what ended it.
 */
export async function untilSignal<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  // Our listener stays until the cleanup is done: with none left, proper-lockfile's signal-exit (loaded
  // with the store) would re-raise the first signal and end the process before the cleanup.
  const stop = (sig: NodeJS.Signals) => {
    if (!ac.signal.aborted) return ac.abort(sig);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    process.kill(process.pid, sig); // a second signal: at once
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/**
 * Runs a command that writes a file through a temp file (get -o, have,
 * export) or works in a scratch store (get --from): stopped by Ctrl-C or
 * SIGTERM, `fn` is stopped through its signal and cleans up (no temp file
 * beside the output, no scratch store left in the temp folder), then the
 * command dies of the signal, saying `message` (if any).
 */
export function cleanlyInterruptible<T>(message: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  return untilSignal(async (signal) => {
    try {
      return await fn(signal);
    } catch (e) {
      if (signal.aborted) throw new Interrupted(signal.reason as NodeJS.Signals, message);
      throw e;
    }
  });
}
