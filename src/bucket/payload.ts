import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import { ioError } from '../errors.js';

/** A command whose request headers a middleware may set before it is signed. */
interface WithMiddleware {
  middlewareStack: { add(mw: (next: (args: { request: unknown }) => Promise<unknown>) => (args: { request: unknown }) => Promise<unknown>, o: { step: 'build'; name: string }): void };
}

/**
 * The SHA-256 (hex) of bytes [start, start + len) of a file, read once.
 * A streamed body is otherwise signed as UNSIGNED-PAYLOAD and sent with no
 * checksum (radosgw refuses the SDK's trailing ones): bytes changed on the
 * way would be stored, and answered 200, as a fragment no one can read.
 */
export async function fileSha256(file: string, start: number, len: number): Promise<string> {
  const h = crypto.createHash('sha256');
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(file, 'r');
    // One buffer, read into again and again: a stream's fresh buffer per piece costs more than the hash.
    const buf = Buffer.allocUnsafe(Math.min(len, 4 * 1024 * 1024));
    for (let done = 0; done < len; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, len - done), start + done);
      if (bytesRead === 0) throw Object.assign(new Error(`${file} ends at ${start + done}, before ${start + len}`), { code: 'EIO' });
      h.update(buf.subarray(0, bytesRead));
      done += bytesRead;
    }
  } catch (e) {
    throw ioError(e, `reading ${file} to upload it`, { path: file });
  } finally {
    await fh?.close();
  }
  return h.digest('hex');
}

/**
 * Sends `sha` as the request's x-amz-content-sha256, the payload hash that
 * Signature Version 4 signs: the server hashes the body it receives and
 * refuses it (400, XAmzContentSHA256Mismatch) if it is not those bytes.
 */
export function signPayload<C>(cmd: C, sha: string): C {
  (cmd as WithMiddleware).middlewareStack.add(
    (next) => (args) => {
      (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'] = sha;
      return next(args);
    },
    { step: 'build', name: 'cabstorePayloadSha256' },
  );
  return cmd;
}
