import fs from 'node:fs/promises';
import zlib from 'node:zlib';
import { CabError } from '../errors.js';
import { writeAll } from '../disk/durable.js';
import { packr } from './packr.js';

export { packr } from './packr.js';

/**
 * Files of records, as bundles and have-files are: a magic string, then
 * records framed as descriptor records are (u32 LE length, u32 LE CRC-32,
 * one MessagePack map), the last one {t:'end', records} counting them all.
 */
const MAX_RECORD = 8 * 1024 * 1024;

function frame(rec: Record<string, unknown>): Buffer {
  const payload = packr.pack(rec);
  const out = Buffer.allocUnsafe(8 + payload.length);
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(zlib.crc32(payload), 4);
  payload.copy(out, 8);
  return out;
}

/** Appends records to a file, through a temp name renamed at the end. */
export class RecordWriter {
  #fh: fs.FileHandle;
  #pos = 0;
  records = 0;
  constructor(
    fh: fs.FileHandle,
    readonly file: string,
    readonly tmp: string,
  ) {
    this.#fh = fh;
  }
  static async create(file: string, magic: Buffer): Promise<RecordWriter> {
    const tmp = `${file}.${process.pid}.tmp`;
    const w = new RecordWriter(await fs.open(tmp, 'w'), file, tmp);
    await w.#raw(magic);
    return w;
  }
  async #raw(b: Buffer): Promise<void> {
    await writeAll(this.#fh, b, this.#pos);
    this.#pos += b.length;
  }
  async put(rec: Record<string, unknown>): Promise<void> {
    this.records++;
    await this.#raw(frame(rec));
  }
  get size(): number {
    return this.#pos;
  }
  async finish(endRec: Record<string, unknown>): Promise<void> {
    await this.put({ ...endRec, t: 'end', records: this.records + 1 });
    await this.#fh.sync();
    await this.#fh.close();
    await fs.rename(this.tmp, this.file);
  }
  async abort(): Promise<void> {
    await this.#fh.close().catch(() => {});
    await fs.rm(this.tmp, { force: true });
  }
}

/** Reads and checks every record of a file; calls `on` with each and its offset. Rejects truncated or corrupt files. */
export async function scan(file: string, magic: Buffer, on: (rec: Record<string, unknown>, at: number, len: number) => void | Promise<void>): Promise<number> {
  const fh = await fs.open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new CabError('ERR_NO_SUCH_FILE', `cannot read ${file}: ${e.message}`, { path: file }, { cause: e });
  });
  const corrupt = (why: string, at: number) => new CabError('ERR_BUNDLE_CORRUPT', `${file}: ${why} at byte ${at}`, { path: file, offset: at });
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(8);
    if ((await fh.read(head, 0, 8, 0)).bytesRead < 8 || !head.equals(magic)) throw corrupt(`not a ${magic.toString()} file`, 0);
    let pos = 8;
    let records = 0;
    let ended = false;
    while (pos < size) {
      if (ended) throw corrupt('bytes after the end record', pos);
      if (pos + 8 > size) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record header`, { path: file, offset: pos });
      await fh.read(head, 0, 8, pos);
      const len = head.readUInt32LE(0);
      if (len > MAX_RECORD) throw corrupt(`a record of ${len} bytes`, pos);
      if (pos + 8 + len > size) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} ends inside a record`, { path: file, offset: pos });
      const payload = Buffer.allocUnsafe(len);
      await fh.read(payload, 0, len, pos + 8);
      if (zlib.crc32(payload) !== head.readUInt32LE(4)) throw corrupt('a record fails its CRC', pos);
      let rec: unknown;
      try {
        rec = packr.unpack(payload);
      } catch {
        throw corrupt('a record does not decode', pos);
      }
      if (rec === null || typeof rec !== 'object' || Array.isArray(rec)) throw corrupt('a record is not a map', pos);
      records++;
      const r = rec as Record<string, unknown>;
      if (r.t === 'end') {
        if (r.records !== records) throw corrupt(`the end record counts ${String(r.records)} records, the file has ${records}`, pos);
        ended = true;
      }
      await on(r, pos + 8, len);
      pos += 8 + len;
    }
    if (!ended) throw new CabError('ERR_BUNDLE_TRUNCATED', `${file} has no end record`, { path: file, offset: pos });
    return records;
  } finally {
    await fh.close();
  }
}
