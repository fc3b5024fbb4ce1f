import fs from 'node:fs/promises';
import { CabError, inputFileError, ioError } from '../errors.js';
import { openOutput, type OutputFile } from '../disk/output.js';
import { FRAME_HEADER, decodeFrame, encodeFrame, frameLength, packr } from '../format/frame.js';

export { packr };

/**
 * Files of records, as bundles and have-files are: a magic string, then
 * records framed as descriptor records are (format/frame.ts), the last one
 * {t:'end', records} counting them all.
 */
const MAX_RECORD = 8 * 1024 * 1024;

/**
 * Appends records to a file the user names, through openOutput: a regular
 * file appears only when finish() is done (a temp file renamed into place),
 * a device or FIFO is written as the records come.
 */
export class RecordWriter {
  #out: OutputFile;
  records = 0;
  private constructor(out: OutputFile) {
    this.#out = out;
  }
  /** Fails before any work (ERR_IO) if `file` is a directory or its directory is missing. */
  static async create(file: string, magic: Buffer): Promise<RecordWriter> {
    const w = new RecordWriter(await openOutput(file));
    try {
      await w.#out.write(magic);
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }
  async put(rec: Record<string, unknown>): Promise<void> {
    this.records++;
    await this.#out.write(encodeFrame(rec));
  }
  get size(): number {
    return this.#out.size;
  }
  async finish(endRec: Record<string, unknown>): Promise<void> {
    await this.put({ ...endRec, t: 'end', records: this.records + 1 });
    await this.#out.commit();
  }
  async abort(): Promise<void> {
    await this.#out.abort();
  }
}

/** Reads and checks every record of a file; calls `on` with each and its offset. Rejects truncated or corrupt files. */
export async function scan(file: string, magic: Buffer, on: (rec: Record<string, unknown>, at: number, len: number) => void | Promise<void>): Promise<number> {
  const fh = await fs.open(file, 'r').catch((e: unknown) => Promise.reject(inputFileError(e, file)));
  const corrupt = (why: string, at: number) => new CabError('ERR_BUNDLE_CORRUPT', `${file}: ${why} at byte ${at}`, { path: file, offset: at });
  try {
    const st = await fh.stat();
    // A directory opens for reading too; only its reads fail (EISDIR).
    if (st.isDirectory()) throw new CabError('ERR_NO_SUCH_FILE', `cannot read ${file}: it is a directory`, { path: file, found: 'EISDIR' });
    const size = st.size;
    const head = Buffer.alloc(FRAME_HEADER);
    if ((await fh.read(head, 0, magic.length, 0)).bytesRead < magic.length || !head.subarray(0, magic.length).equals(magic)) throw corrupt(`not a ${magic.toString()} file`, 0);
    let pos = magic.length;
    let records = 0;
    let ended = false;
    while (pos < size) {
      if (ended) throw corrupt('bytes after the end record', pos);
      if (pos + FRAME_HEADER > size) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record header`, { path: file, offset: pos });
      await fh.read(head, 0, FRAME_HEADER, pos);
      const len = frameLength(head);
      if (len > MAX_RECORD) throw corrupt(`a record of ${len} bytes`, pos);
      if (pos + FRAME_HEADER + len > size) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record`, { path: file, offset: pos });
      const payload = Buffer.allocUnsafe(len);
      await fh.read(payload, 0, len, pos + FRAME_HEADER);
      const r = decodeFrame(head, payload);
      if (typeof r === 'string') throw corrupt(`a ${r}`, pos);
      records++;
      if (r.t === 'end') {
        if (r.records !== records) throw corrupt(`the end record counts ${String(r.records)} records, the file has ${records}`, pos);
        ended = true;
      }
      await on(r, pos + FRAME_HEADER, len);
      pos += FRAME_HEADER + len;
    }
    if (!ended) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} has no end record`, { path: file, offset: pos });
    return records;
  } catch (e) {
    // A read that failed (EIO); the checks' own errors and the caller's pass as they are.
    throw typeof (e as NodeJS.ErrnoException).errno === 'number' ? ioError(e, `reading ${file}`, { path: file }) : e;
  } finally {
    await fh.close();
  }
}
