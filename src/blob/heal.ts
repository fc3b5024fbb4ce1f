import type fs from 'node:fs/promises';
import { CabError } from '../errors.js';
import { bytesEqual, fromHex } from '../hash/sha256.js';
import { checkChunk } from '../disk/blob-bytes.js';
import { ChunkPager, type ChunkInfo } from '../disk/chunk-pager.js';
import { damageFrom, uncovered, widenToChunks, type DamageRange } from '../format/damage.js';
import { encodeHeader, encodeRecord, readDescriptorFrom, type AppendRecord, type Descriptor } from '../format/descriptor.js';
import { FragmentWriter } from '../disk/fragments.js';
import type { StoreInternals } from './context.js';
import { checkBlobName } from '../format/layout.js';
import { lockDescriptor, replaceDescriptor } from '../index/rewrite.js';

/** A healed blob range and where its bytes start in the healing fragment. */
interface Healed {
  o: number;
  e: number;
  fo: number;
}

/**
 * Mends a finalized blob that fsck recorded as damaged, from healthy copies
 * of its damaged chunks (a pull or an import supplies them):
 *
 *   open (writer lock) --write(offset, bytes)...--> commit | abort
 *
 * Each damaged chunk, once whole, must hash to the SHA-256 recorded for it
 * (else ERR_HASH_MISMATCH, and nothing changes); it then goes to a new
 * fragment. `commit` seals the fragment and replaces the descriptor
 * atomically (see replaceDescriptor) with one whose extents take the healed
 * ranges from the new fragment and whose damage records are gone for them.
 * The new descriptor is plain format 1: older readers read it as any other.
 */
export class BlobHealer {
  readonly name: string;
  /** The damaged byte ranges, in whole chunks: the bytes the healer needs. */
  readonly damage: readonly DamageRange[];
  readonly #s: StoreInternals;
  readonly #fh: fs.FileHandle;
  readonly #d: Descriptor;
  readonly #pager: ChunkPager;
  #frag: FragmentWriter | undefined;
  readonly #healed: Healed[] = [];
  /** The damaged chunk being filled. */
  #cur: { c: ChunkInfo; bytes: Buffer; filled: number } | undefined;
  #done = false;

  private constructor(s: StoreInternals, fh: fs.FileHandle, d: Descriptor, pager: ChunkPager, damage: DamageRange[]) {
    this.#s = s;
    this.#fh = fh;
    this.#d = d;
    this.#pager = pager;
    this.name = d.name;
    this.damage = damage;
  }

  /** Takes the blob's writer lock (ERR_BLOB_LOCKED) and reads its damage. */
  static async open(s: StoreInternals, name: string): Promise<BlobHealer> {
    checkBlobName(name);
    s.checkOpen();
    const fh = await lockDescriptor(s.layout, name);
    try {
      const d = await readDescriptorFrom(fh, name);
      if (!d.finalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `blob ${name} is not finalized: only a finalized blob is healed`, { blob: name });
      const pager = new ChunkPager(fh, d.chunkRecords);
      return new BlobHealer(s, fh, d, pager, await widenToChunks(d.damage, d.chunkEnd, (p) => pager.chunkAt(p)));
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Bytes of damage healed so far. */
  get healedBytes(): number {
    return this.#healed.reduce((n, h) => n + h.e - h.o, 0);
  }

  /**
   * Healthy bytes of the blob at `offset`. Calls come in blob order; the
   * bytes inside damaged ranges must come without gaps. Bytes outside them
   * are ignored.
   */
  async write(offset: number, bytes: Uint8Array): Promise<void> {
    const end = offset + bytes.length;
    let p = offset;
    while (p < end) {
      const r = damageFrom(this.damage, p);
      if (!r || r.o >= end) return;
      p = Math.max(p, r.o);
      if (!this.#cur) {
        const c = await this.#pager.chunkAt(p);
        this.#cur = { c, bytes: Buffer.allocUnsafe(c.size), filled: 0 };
      }
      const cur = this.#cur;
      if (p !== cur.c.start + cur.filled) throw new CabError('ERR_BAD_ARGUMENT', `healing bytes for ${this.name} skip from ${cur.c.start + cur.filled} to ${p}`, { blob: this.name, offset: p });
      const n = Math.min(cur.c.start + cur.c.size, end) - p;
      cur.bytes.set(bytes.subarray(p - offset, p - offset + n), cur.filled);
      cur.filled += n;
      p += n;
      if (cur.filled === cur.c.size) await this.#keep(cur.c, cur.bytes);
    }
  }

  async #keep(c: ChunkInfo, bytes: Buffer): Promise<void> {
    checkChunk(this.name, c, bytes);
    this.#frag ??= await FragmentWriter.create(this.#s.layout);
    const fo = this.#frag.size;
    await this.#frag.write(bytes);
    const last = this.#healed[this.#healed.length - 1];
    if (last && last.e === c.start) last.e += c.size;
    else this.#healed.push({ o: c.start, e: c.start + c.size, fo });
    this.#cur = undefined;
  }

  /**
   * Makes the healed chunks part of the blob (fragment sealed, descriptor
   * replaced, index rebuilt) and releases it. Returns the bytes healed.
   */
  async commit(): Promise<number> {
    this.#check();
    try {
      const frag = this.#frag;
      if (!frag) return 0;
      const id = frag.id;
      const bin = fromHex(id);
      // Pinned before it appears in cas/, until the new descriptor references it (see FORMAT.md, GC).
      await this.#s.lease.pin([id]);
      try {
        await frag.seal(this.#s.cas);
        const left = uncovered(this.damage, this.#healed);
        const fh = await replaceDescriptor(this.#s.layout, this.#s.index, this.name, async (append) => {
          await append(encodeHeader(this.name, this.#d.ctime));
          let start = 0;
          await readDescriptorFrom(this.#fh, this.name, {
            extents: false,
            onAppend: async (rec) => {
              await append(encodeRecord({ ...rec, x: healExtents(rec.x, start, this.#healed, bin) }));
              start = rec.s;
            },
          });
          for (const r of left) await append(encodeRecord({ t: 'd', o: r.o, e: r.e, why: r.why }));
        });
        await fh.close();
        // Before the pin goes: the bucket's descriptor must reference the new fragment too.
        await this.#s.shared?.replaced(this.name);
      } finally {
        await this.#s.lease.unpin([id]);
      }
      return this.healedBytes;
    } finally {
      await this.#release();
    }
  }

  /** Changes nothing and releases the blob. Safe to call after commit. */
  async abort(): Promise<void> {
    if (this.#done) return;
    await this.#frag?.discard();
    await this.#release();
  }

  #check(): void {
    if (this.#done) throw new CabError('ERR_CLOSED', `the healer of ${this.name} is closed`, { blob: this.name });
  }

  async #release(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#fh.close();
  }
}

/**
 * A record's extents (which cover blob bytes from `start` on) with the
 * healed ranges taken from fragment `frag` instead; runs that continue in
 * one fragment are merged.
 */
function healExtents(x: AppendRecord['x'], start: number, healed: readonly Healed[], frag: Uint8Array): AppendRecord['x'] {
  const out: AppendRecord['x'] = [];
  const push = (f: Uint8Array, off: number, size: number) => {
    const last = out[out.length - 1];
    if (last && bytesEqual(last[0], f) && last[1] + last[2] === off) last[2] += size;
    else out.push([f, off, size]);
  };
  let p = start;
  for (const [f, off, size] of x) {
    const end = p + size;
    for (let q = p; q < end; ) {
      const h = healed.find((r) => r.e > q);
      if (h && h.o <= q) {
        const n = Math.min(h.e, end) - q;
        push(frag, h.fo + (q - h.o), n);
        q += n;
      } else {
        const n = Math.min(h ? h.o : end, end) - q;
        push(f, off + (q - p), n);
        q += n;
      }
    }
    p = end;
  }
  return out;
}
