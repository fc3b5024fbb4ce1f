import fs from 'node:fs';
import { ioError } from '../errors.js';

/** Below this much free space, a failed LMDB write is taken for a full disk. */
const LOW_SPACE = 4 * 1024 * 1024;

/**
 * LMDB reports a page write that hit a full disk as EIO (errno 5), not
 * ENOSPC: when the file system holding `dir` is (nearly) full, say so.
 */
function lmdbError(e: unknown, what: string, dir: string) {
  const code = (e as { code?: unknown })?.code;
  if (code === 5 || code === 28 || code === 'EIO' || code === 'ENOSPC') {
    try {
      const st = fs.statfsSync(dir);
      if (st.bavail * st.bsize < LOW_SPACE) return ioError(Object.assign(new Error(String((e as Error).message)), { code: 'ENOSPC' }), what);
    } catch {
      // statfs failing says nothing more: report the error as it came
    }
  }
  return ioError(e, what);
}

/**
 * Runs a synchronous LMDB write (a transactionSync, a putSync) and turns its
 * failure into a CabError: a full disk is ERR_NO_SPACE, anything else ERR_IO.
 *
 * Every write is synchronous. lmdb-js's asynchronous commits fail badly on a
 * full disk: the real cause hangs on `error.commitError`, a second promise
 * nobody handles, whose rejection ends the process (lmdb-js issue #368), and
 * after a failed commit `close()` waits forever for a flush that never comes.
 */
export function lmdbWriteSync<T>(what: string, dir: string, write: () => T): T {
  try {
    return write();
  } catch (e) {
    throw lmdbError(e, what, dir);
  }
}
