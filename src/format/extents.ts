/** A byte range of a fragment: the unit a blob is made of. */
export interface Extent {
  /** Fragment id: 64 hex chars, the SHA-256 of the fragment's bytes. */
  frag: string;
  /** Offset inside the fragment. */
  offset: number;
  size: number;
}

/**
 * A blob's extents in blob order, in typed arrays (about 28 bytes an extent)
 * with binary search by blob offset. Appending a range contiguous with the
 * last one in the same fragment extends it, so dedup runs and appendBlob of
 * long ranges stay one extent.
 */
export class ExtentMap {
  #starts = new Float64Array(16);
  #fragOffs = new Float64Array(16);
  #sizes = new Float64Array(16);
  #fragIdx = new Uint32Array(16);
  #frags: string[] = [];
  #fragIds = new Map<string, number>();
  #n = 0;
  #size = 0;

  /** Total bytes. */
  get size(): number {
    return this.#size;
  }

  get count(): number {
    return this.#n;
  }

  push(frag: string, offset: number, size: number): void {
    if (size === 0) return;
    let fi = this.#fragIds.get(frag);
    if (fi === undefined) {
      fi = this.#frags.length;
      this.#frags.push(frag);
      this.#fragIds.set(frag, fi);
    }
    const last = this.#n - 1;
    if (last >= 0 && this.#fragIdx[last] === fi && this.#fragOffs[last]! + this.#sizes[last]! === offset) {
      this.#sizes[last]! += size;
      this.#size += size;
      return;
    }
    if (this.#n === this.#starts.length) this.#grow();
    this.#starts[this.#n] = this.#size;
    this.#fragOffs[this.#n] = offset;
    this.#sizes[this.#n] = size;
    this.#fragIdx[this.#n] = fi;
    this.#n++;
    this.#size += size;
  }

  #grow(): void {
    const cap = this.#starts.length * 2;
    const g = <T extends Float64Array | Uint32Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a);
      return b;
    };
    this.#starts = g(this.#starts, (n) => new Float64Array(n));
    this.#fragOffs = g(this.#fragOffs, (n) => new Float64Array(n));
    this.#sizes = g(this.#sizes, (n) => new Float64Array(n));
    this.#fragIdx = g(this.#fragIdx, (n) => new Uint32Array(n));
  }

  /** Index of the extent holding blob offset `pos` (0 <= pos < size). */
  find(pos: number): number {
    let lo = 0;
    let hi = this.#n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Extent i, with `start` its blob offset. */
  at(i: number): Extent & { start: number } {
    return { frag: this.#frags[this.#fragIdx[i]!]!, offset: this.#fragOffs[i]!, size: this.#sizes[i]!, start: this.#starts[i]! };
  }

  /** The extents covering blob bytes [offset, offset + size), clipped to the range. */
  *slice(offset: number, size: number): Generator<Extent> {
    const end = offset + size;
    if (size <= 0) return;
    for (let i = this.find(offset); i < this.#n && this.#starts[i]! < end; i++) {
      const s = this.#starts[i]!;
      const from = Math.max(offset, s);
      const to = Math.min(end, s + this.#sizes[i]!);
      yield { frag: this.#frags[this.#fragIdx[i]!]!, offset: this.#fragOffs[i]! + (from - s), size: to - from };
    }
  }

  /** The distinct fragments referenced. */
  fragments(): readonly string[] {
    return this.#frags;
  }
}
