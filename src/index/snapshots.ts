import fs from 'node:fs';
import { CabError, ioError } from '../errors.js';
import { readDescriptor, type Descriptor } from '../format/descriptor.js';
import { checkBlobName, type Layout } from '../format/layout.js';

/** Parsed descriptors kept for dedup, appendBlob and stat. */
const SNAPSHOTS = 16;

/**
 * The durable state of blobs, parsed, for the few most recently asked
 * (least recently used goes first). An entry stands while its descriptor
 * file has the same size and inode: descriptors only grow in place, and a
 * rewritten one (healed, cut back) is a new file, maybe of the same size.
 */
export class Snapshots {
  readonly #layout: Layout;
  readonly #cache = new Map<string, { fileSize: number; ino: number; d: Promise<Descriptor> }>();

  constructor(layout: Layout) {
    this.#layout = layout;
  }

  /** The blob's descriptor, parsed; ERR_NO_SUCH_BLOB if it has none. */
  async get(name: string): Promise<Descriptor> {
    checkBlobName(name);
    const file = this.#layout.descriptor(name);
    let fileSize: number;
    let ino: number;
    try {
      // Synchronous: a writer asks once per chunk it deduplicates (16 K times a GiB), and a stat of a
      // local file's metadata is microseconds; through the thread pool each cost 30 us of this thread.
      ({ size: fileSize, ino } = fs.statSync(file));
    } catch (e) {
      this.#cache.delete(name);
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new CabError('ERR_NO_SUCH_BLOB', `no blob ${name}`, { blob: name });
      throw ioError(e, `looking at the descriptor of blob ${name}`, { blob: name });
    }
    const hit = this.#cache.get(name);
    if (hit && hit.fileSize === fileSize && hit.ino === ino) {
      this.#cache.delete(name);
      this.#cache.set(name, hit);
      return hit.d;
    }
    const d = readDescriptor(file, name);
    this.#cache.set(name, { fileSize, ino, d });
    d.catch(() => this.#cache.delete(name));
    if (this.#cache.size > SNAPSHOTS) this.#cache.delete(this.#cache.keys().next().value!);
    return d;
  }

  forget(name: string): void {
    this.#cache.delete(name);
  }

  clear(): void {
    this.#cache.clear();
  }
}
