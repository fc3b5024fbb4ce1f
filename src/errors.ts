/**
 * Every failure cabstore reports is a CabError with a stable `code`.
 * Callers branch on `code`, never on the message. The table below is the
 * single list of codes; the README documents the same list.
 */
export const ERROR_CODES = {
  ERR_BAD_CHUNKER_PARAMS: 'chunker parameters are not integers with 64 <= min < avg < max <= 4 MiB (the chunker alone: 64 MiB) and avg a power of two',
  ERR_BAD_HASH_STATE: 'a saved merkle hasher state is malformed or inconsistent',
  ERR_BAD_HEX: 'a string is not an even number of lowercase or uppercase hex digits',
  ERR_BAD_ARGUMENT: 'an argument has the wrong type or is out of range',
  ERR_INVALID_BLOB_NAME: 'a blob name is not 32 lowercase hex characters',
  ERR_BLOB_EXISTS: 'a blob of that name already exists',
  ERR_NO_SUCH_BLOB: 'no blob of that name exists in the store',
  ERR_BLOB_FINALIZED: 'the blob is finalized and cannot be written',
  ERR_BLOB_LOCKED: 'another writer (in this or another process) holds the blob',
  ERR_ILLEGAL_POSITION: 'a position or range lies past the end of the blob or file',
  ERR_NEGATIVE_POSITION: 'a position, offset or size is negative or not an integer',
  ERR_BAD_WHENCE: 'seek whence is not 0, 1 or 2',
  ERR_NO_SUCH_CHUNK: 'no blob in the store holds a chunk with that hash',
  ERR_NO_SUCH_FILE: 'a local file given to appendBytes (or compared with a blob) does not exist or may not be read (ENOENT, EACCES, not a file, ...); an I/O error reading it is ERR_IO',
  ERR_BLOB_DAMAGED: 'the bytes asked for lie in a range fsck recorded as damaged (data.offset..data.end); a pull or import of the blob heals it',
  ERR_FRAGMENT_MISSING: 'a fragment a blob needs is missing or shorter than its extents',
  ERR_DESCRIPTOR_CORRUPT:
    "a blob's descriptor is corrupt: a bad header, or a bad record that a crash cannot have left (it is followed by good records, or is complete and not zero-filled; data.offset is where): reading or resuming the blob fails, GC fails and deletes nothing, fsck reports it and --repair leaves it as it is, until it is mended or deleted (docs/FORMAT.md)",
  ERR_FORMAT_VERSION: 'the store or a descriptor has a newer format version than this code reads',
  ERR_BAD_STORE: "the directory is not a cabstore store (data.reason: 'absent', 'not-empty': other files and no store, 'not-a-directory', 'tables-damaged': its tables file is not one LMDB can open safely), or its cabstore.json is damaged",
  ERR_GC_RUNNING: 'another GC is running on this store (pass wait: true to wait for it)',
  ERR_FSCK_FAILED: 'fsck found a problem it did not repair, or a blob with damage recorded (its report lists them; the command line exits 1 with this code)',
  ERR_PROTOCOL: 'a peer sent a malformed, unknown or out-of-place message',
  ERR_TOO_MANY_REQUESTS: 'a peer has more requests outstanding than the limit, the HTTP face has as many uploads under way as it takes (503, Retry-After), or the server has as many connections open as it takes (maxConnections: a refused connect, or 503 with Retry-After)',
  ERR_IDLE_TIMEOUT: 'a peer sent nothing, said no hello, or read nothing for longer than its limit (an upload body that stalls is cut with it)',
  ERR_AUTH: 'the credential is missing or unknown',
  ERR_AUTH_LIMIT: 'too many failed credentials came from this address: refused, even a good one, until it has waited',
  ERR_PERMISSION: 'the credential does not allow this operation (read or write)',
  ERR_HASH_MISMATCH: 'bytes do not hash to what was asked for or recorded (received from a peer, or read from disk: data.offset is the chunk), or a blob does not hash to its announced hash',
  ERR_VERSION: 'the peer speaks another protocol version',
  ERR_CONNECTION: 'the connection to the peer failed or closed',
  ERR_BLOB_NOT_FINALIZED: 'the blob is not finalized, so it cannot be transferred yet',
  ERR_REMOTE: 'the peer failed to serve a request for a reason of its own',
  ERR_BUNDLE_TRUNCATED: 'a bundle or have-file ends early (no end record, or a record cut short)',
  ERR_BUNDLE_CORRUPT: 'a bundle or have-file fails a check (magic, CRC, structure)',
  ERR_CLOSED: 'the store, writer or reader is closed',
  ERR_ABORTED: 'the operation was cancelled through its AbortSignal',
  ERR_NO_SPACE: 'the file system is full (ENOSPC or EDQUOT): the operation failed, what was durable before it stands',
  ERR_OBJECT_STORE:
    "the object store (S3) failed a request or could not be reached: data.s3Code is the S3 error code (or the errno of a failed connection), data.status the HTTP status, data.key the object; on a safety path (GC, fsck) nothing was deleted or marked",
  ERR_IO: 'an I/O error (EIO, EMFILE, ...) stopped the operation, or the system refused it (a port in use, a directory that cannot be made; data.found has the errno); on a safety path (GC, fsck) nothing was deleted or marked',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Extra facts an error carries, for programs that handle it. */
export interface CabErrorData {
  expected?: unknown;
  found?: unknown;
  blob?: string;
  offset?: number;
  path?: string;
  [key: string]: unknown;
}

export class CabError extends Error {
  readonly code: ErrorCode;
  readonly data: CabErrorData;

  constructor(code: ErrorCode, message?: string, data: CabErrorData = {}, options?: { cause?: unknown }) {
    super(`${code}: ${message ?? ERROR_CODES[code]}`, options);
    this.name = 'CabError';
    this.code = code;
    this.data = data;
  }
}

/** Errno codes that mean the file system is full. */
const NO_SPACE = new Set(['ENOSPC', 'EDQUOT']);

/**
 * Turns a low-level error from the file system or LMDB into a CabError:
 * a full disk becomes ERR_NO_SPACE, any other errno ERR_IO; a CabError
 * passes through unchanged. `what` says what was being done.
 */
export function ioError(e: unknown, what: string, data: CabErrorData = {}): CabError {
  if (e instanceof CabError) return e;
  const err = e as NodeJS.ErrnoException;
  const msg = err?.message ?? String(e);
  if (NO_SPACE.has(err?.code ?? '') || /MDB_MAP_FULL|ENOSPC|No space left/.test(msg)) {
    return new CabError('ERR_NO_SPACE', `${what}: the file system is full (${msg})`, { ...data, found: err?.code }, { cause: e });
  }
  return new CabError('ERR_IO', `${what}: ${msg}`, { ...data, found: err?.code }, { cause: e });
}

/** Errnos of an open that mean the file is not there to read, or not ours to read: ERR_NO_SUCH_FILE. */
const NOT_THERE = new Set(['ENOENT', 'ENOTDIR', 'EISDIR', 'EACCES', 'EPERM', 'ELOOP', 'ENAMETOOLONG', 'ENXIO']);

/** The error of a failed open (or stat) of a local file the user names: ERR_NO_SUCH_FILE if it is not there (or not ours), else ERR_IO (EIO, EMFILE: the file may be fine). */
export function inputFileError(e: unknown, file: string): CabError {
  if (!NOT_THERE.has((e as NodeJS.ErrnoException)?.code ?? '')) return ioError(e, `opening ${file}`, { path: file });
  return new CabError('ERR_NO_SUCH_FILE', `cannot read ${file}: ${(e as Error).message}`, { path: file }, { cause: e });
}

/** ERR_BAD_ARGUMENT unless `x` is bytes (a Uint8Array or Buffer; not a string, nor another typed array, whose bytes depend on the machine). */
export function checkBytes(x: unknown, what: string): asserts x is Uint8Array {
  if (!(x instanceof Uint8Array)) throw new CabError('ERR_BAD_ARGUMENT', `${what} takes a Uint8Array (or Buffer), not ${x === null ? 'null' : ArrayBuffer.isView(x) ? x.constructor.name : typeof x}`);
}

/** Narrowing helper: `isCabError(e, 'ERR_CLOSED')`. */
export function isCabError(e: unknown, code?: ErrorCode): e is CabError {
  return e instanceof CabError && (code === undefined || e.code === code);
}

/** ERR_ABORTED for an aborted `signal` (its reason as the cause); `what` names the operation, as in "gc was cancelled". */
export function abortError(signal: AbortSignal, what: string, data: CabErrorData = {}): CabError {
  return new CabError('ERR_ABORTED', `${what} was cancelled`, data, { cause: signal.reason });
}

/** Throws abortError once `signal` is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string, data: CabErrorData = {}): void {
  if (signal?.aborted) throw abortError(signal, what, data);
}

/** The `signal` of an options object (which may be absent): absent, or an AbortSignal. */
export function checkSignal(options: unknown, what: string): AbortSignal | undefined {
  if (options === undefined) return undefined;
  if (options === null || typeof options !== 'object') throw new CabError('ERR_BAD_ARGUMENT', `${what} takes an options object`);
  const { signal } = options as { signal?: unknown };
  if (signal === undefined || signal instanceof AbortSignal) return signal;
  throw new CabError('ERR_BAD_ARGUMENT', `${what}: signal must be an AbortSignal`);
}

/**
 * Settles as `p` does, unless `signal` fires first: then with what
 * `onAbort()` returns, or rejects with what it throws. `p` goes on; its
 * failure is observed here (never an unhandled rejection), and dropped.
 */
export function raceAbort<T, U>(p: Promise<T>, signal: AbortSignal | undefined, onAbort: () => U): Promise<T | U> {
  if (!signal) return p;
  return new Promise<T | U>((resolve, reject) => {
    const abort = () => {
      try {
        resolve(onAbort());
      } catch (e) {
        reject(e);
      }
    };
    if (signal.aborted) {
      p.catch(() => {});
      return abort();
    }
    signal.addEventListener('abort', abort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', abort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(e);
      },
    );
  });
}
