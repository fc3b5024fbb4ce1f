import type { Readable } from 'node:stream';
import { DataStore, ERRORS, Metadata, Upload } from '@tus/utils';
import { CabError, isCabError } from '../errors.js';
import { checkBlobName } from '../format/layout.js';
import type { UploadRecord } from '../index/tables.js';
import type { BlobStore } from '../store.js';
import type { BlobWriter } from '../blob/writer.js';
import { bodyPieces, type RequestBodies } from './tus-body.js';

/**
 * Bytes of a PATCH body appended between two checkpoints. Checkpoints are
 * made durable (fsync of the fragment and the descriptor) while the next
 * segments are read, up to CHECKPOINTS_IN_FLIGHT at once, so a server
 * killed mid-PATCH has lost (and the client sends again) at most about
 * three times this much. 4 MiB, not 6 or 8: on a loaded machine the fsyncs
 * lag, and a 512 MiB upload through three SIGKILLs sent 1.06-1.12x the file
 * with 6 MiB and one checkpoint in flight, 1.10x (twice) with 8 MiB, against
 * 1.07-1.09x with 4 MiB and two in flight (the bench's tus-kill case). Each
 * checkpoint costs about 4 ms of CPU (a fragment sealed and a new one
 * begun, the pins file, three fsyncs): 8 MiB would save about 0.5 s per GiB.
 */
export const UPLOAD_FLUSH_BYTES = 4 * 1024 * 1024;

/**
 * ERR_BAD_ARGUMENT for a POST's Upload-Metadata that @tus/server would
 * refuse with a bare 400 (no code), else undefined: a key that names a
 * property of Object.prototype (`__proto__`, `constructor`, `toString`...:
 * @tus/server parses the pairs into a plain object and takes such a key for
 * a repeat; `__proto__` could not be kept in one anyway, the uploads table
 * refuses it), and any header its parser refuses (tus 1.0: comma-separated
 * pairs `KEY BASE64`, or a bare `KEY`; keys of printable ASCII without
 * spaces or commas, each once; no space after a comma).
 */
export function metadataKeyRefusal(header: string | undefined): CabError | undefined {
  if (!header) return undefined; // none, as @tus/server reads an empty one
  for (const pair of header.split(',')) {
    const key = pair.split(' ')[0]!;
    if (key in Object.prototype) return new CabError('ERR_BAD_ARGUMENT', `Upload-Metadata cannot have the key ${JSON.stringify(key)} (a name of JavaScript's Object.prototype)`, { found: key });
  }
  try {
    Metadata.parse(header);
  } catch {
    return new CabError(
      'ERR_BAD_ARGUMENT',
      'Upload-Metadata is not valid: tus wants comma-separated pairs "KEY BASE64VALUE" (or a bare KEY), each key once, of ASCII without spaces or commas, and no space after a comma',
      { found: header.slice(0, 200) },
    );
  }
  return undefined;
}

/**
 * tus uploads as blobs of this store (a DataStore of @tus/server). The
 * upload id is the blob's name; the upload's offset is the blob's durable
 * size, so an upload resumes where the durable bytes end, whatever killed
 * the server; the upload is finished when the blob is finalized. What the
 * client declared (Upload-Length, Upload-Metadata) is kept in the store's
 * `uploads` table under the same name.
 *
 *   POST: record, then an empty blob (a crash between leaves a record with
 *         no blob: 404, swept at expiry)
 *   PATCH: resume the blob, append (a checkpoint every UPLOAD_FLUSH_BYTES
 *         and at the end), finalize once the length is reached
 *   DELETE: the unfinished blob deleted (its fragments left to GC), then the record
 *
 * An upload untouched for `expiryMs` expires: deleteExpired deletes its
 * blob if unfinished, and its record either way.
 */
export class BlobUploads extends DataStore {
  readonly #store: BlobStore;
  readonly #expiryMs: number;
  readonly #bodies: RequestBodies | undefined;
  readonly #maxSize: number;
  readonly #stallMs: number;
  /** Calls under way: the server waits for them before the store may close. */
  readonly #busy = new Set<Promise<unknown>>();
  /** Uploads made by a POST not answered yet (its Node request -> the upload's name): see dropUnnamed. */
  readonly #creating = new WeakMap<object, string>();

  /**
   * `bodies`: where a write finds its request's body (else it reads the stream tus gives it); `maxSize`: the
   * largest upload (Infinity: no limit); `stallMs`: a body that brings nothing this long is cut (0: never; bodyPieces).
   */
  constructor(store: BlobStore, expiryMs: number, bodies?: RequestBodies, maxSize = Infinity, stallMs = 0) {
    super();
    this.#store = store;
    this.#expiryMs = expiryMs;
    this.#bodies = bodies;
    this.#maxSize = maxSize;
    this.#stallMs = stallMs;
    this.extensions = ['creation', 'creation-with-upload', 'creation-defer-length', 'termination', 'expiration'];
  }

  /** Resolves once no call is under way (the server is closing: no new ones come). */
  async idle(): Promise<void> {
    while (this.#busy.size > 0) await Promise.allSettled([...this.#busy]);
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#busy.add(p);
    void p.then(
      () => this.#busy.delete(p),
      () => this.#busy.delete(p),
    );
    return p;
  }

  override create(upload: Upload): Promise<Upload> {
    return this.#track(this.#create(upload));
  }

  override write(stream: Readable, id: string, offset: number): Promise<number> {
    return this.#track(this.#write(stream, id, offset));
  }

  override remove(id: string): Promise<void> {
    return this.#track(this.#remove(id));
  }

  override deleteExpired(): Promise<number> {
    return this.#track(this.#deleteExpired());
  }

  async #create(upload: Upload): Promise<Upload> {
    const name = checkBlobName(upload.id);
    const touched = new Date();
    // tus creates under the upload's lock, held by the POST: its body is the one held for this name.
    const post = this.#bodies?.held(name)?.body;
    if (post) this.#creating.set(post, name);
    await this.#store.tables.uploads.set(name, { length: upload.size ?? null, metadata: { ...(upload.metadata ?? {}) }, touched });
    const w = await this.#store.newBlobWriter(name);
    if (upload.size === 0) await w.close();
    else await w.closeWithoutFinalize();
    upload.creation_date = touched.toISOString();
    return upload;
  }

  override async getUpload(id: string): Promise<Upload> {
    const rec = this.#record(id);
    const st = await this.#store.stat(id).catch((e: unknown) => {
      if (isCabError(e, 'ERR_NO_SUCH_BLOB')) throw ERRORS.FILE_NOT_FOUND;
      throw e;
    });
    return new Upload({ id, offset: st.size, metadata: rec.metadata, creation_date: rec.touched.toISOString(), ...(rec.length === null ? {} : { size: rec.length }) });
  }

  async #write(stream: Readable, id: string, offset: number): Promise<number> {
    const rec = this.#record(id);
    const w = await this.#store.resumeBlobWriter(id);
    // Touched while the writer's lock is held, at the start and at the end: an expiry sweep that read the record
    // before finds it fresh when it looks again, or the blob locked (see #deleteExpired).
    await this.#touch(id);
    try {
      if (w.size !== offset) throw ERRORS.INVALID_OFFSET;
      // The body past what the upload may still take is tus's 413 (what tus's own limit on its stream would say).
      const held = this.#bodies?.held(id);
      await appendFlushed(w, held ? bodyPieces(held, (rec.length ?? this.#maxSize) - offset, this.#stallMs) : stream);
      if (rec.length !== null && w.size === rec.length) await w.close();
      return w.size;
    } finally {
      await this.#touch(id).finally(() => w.closeWithoutFinalize());
    }
  }

  /**
   * Called with the status a POST (`req`, Node's request) is about to be
   * answered with, before it is sent. A POST that made an upload and is
   * not answered 201 (creation-with-upload whose body was refused with 413,
   * or cut) gives the client no Location: no one can resume, finish or
   * delete that upload, so it goes now, its blob and its record (its
   * fragments are left to GC).
   */
  dropUnnamed(req: object, status: number): Promise<void> {
    const name = this.#creating.get(req);
    if (name === undefined) return Promise.resolve();
    this.#creating.delete(req);
    if (status === 201) return Promise.resolve();
    return this.#track(
      (async () => {
        await this.#deleteBlob(name);
        await this.#store.tables.uploads.delete(name);
      })(),
    );
  }

  override async declareUploadLength(id: string, length: number): Promise<void> {
    const rec = this.#record(id);
    await this.#store.tables.uploads.set(id, { ...rec, length, touched: new Date() });
  }

  async #remove(id: string): Promise<void> {
    this.#record(id);
    await this.#deleteBlob(id);
    await this.#store.tables.uploads.delete(id);
  }

  override getExpiration(): number {
    return this.#expiryMs;
  }

  /** Expires uploads untouched for expiryMs: unfinished blobs deleted, records removed. A blob being written is left for the next sweep. */
  async #deleteExpired(): Promise<number> {
    if (this.#expiryMs <= 0) return 0;
    const before = Date.now() - this.#expiryMs;
    const stale: string[] = [];
    for await (const [name, rec] of this.#store.tables.uploads.stream()) if (rec.touched.getTime() < before) stale.push(name);
    let n = 0;
    for (const name of stale) {
      // Looked at again just before: a PATCH may have touched it since the list was made.
      const now = this.#store.tables.uploads.get(name);
      if (now && now.touched.getTime() >= before) continue;
      try {
        const st = await this.#store.stat(name).catch((e: unknown) => (isCabError(e, 'ERR_NO_SUCH_BLOB') ? undefined : Promise.reject(e)));
        if (st && !st.finalized) await this.#deleteBlob(name);
      } catch (e) {
        if (isCabError(e, 'ERR_BLOB_LOCKED')) continue;
        throw e;
      }
      await this.#store.tables.uploads.delete(name);
      n++;
    }
    return n;
  }

  /** The upload's record; tus's 404 if there is none (not an upload, or a name that is not a blob name). */
  #record(id: string): UploadRecord {
    let rec: UploadRecord | undefined;
    try {
      rec = this.#store.tables.uploads.get(checkBlobName(id));
    } catch (e) {
      if (isCabError(e, 'ERR_INVALID_BLOB_NAME')) throw ERRORS.FILE_NOT_FOUND;
      throw e;
    }
    if (!rec) throw ERRORS.FILE_NOT_FOUND;
    return rec;
  }

  async #touch(id: string): Promise<void> {
    const rec = this.#store.tables.uploads.get(id);
    if (rec) await this.#store.tables.uploads.set(id, { ...rec, touched: new Date() });
  }

  /** Deletes an unfinished upload's blob; one already gone is fine. */
  async #deleteBlob(name: string): Promise<void> {
    await this.#store.deleteBlob(name).catch((e: unknown) => {
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB')) throw e;
    });
  }
}

/**
 * Appends everything `stream` gives, with a checkpoint every
 * UPLOAD_FLUSH_BYTES (durable by the next one) and a durable one at the end. If the stream fails (the body is
 * longer than the upload), what it gave before is appended and its error
 * is thrown.
 */
async function appendFlushed(w: BlobWriter, stream: AsyncIterable<Buffer>): Promise<void> {
  // One append for the whole body, the writer checkpointing inside it: each checkpoint is made durable while
  // the next bytes are read (waiting for each fsync held the socket up), and an append per segment waited at
  // its end for the hashing thread to catch up, 256 times a GiB. A failure leaves the writer to its caller's
  // closeWithoutFinalize, which makes what was appended durable; the PATCH answers only once everything is
  // durable (flush).
  w.checkpointEvery(UPLOAD_FLUSH_BYTES);
  await w.appendStream(stream);
  await w.flush();
}
