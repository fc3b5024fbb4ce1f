/**
 * Where a descriptor's chunk lists are: one row per append record that
 * ended chunks (its byte range in the file, the blob offset of its first
 * chunk, how many). 32 bytes a record, against 36 a chunk for the lists
 * themselves: a reader pages the lists in from the file (ChunkPager) instead
 * of holding a huge blob's whole list (a 1 TiB blob of 64 KiB chunks has
 * 16 million of them, 600 MB).
 */
export class ChunkRecords {
  /** Rows of 4: file start, file end, blob offset of the first chunk, chunk count. */
  #rows = new Float64Array(4 * 8);
  #n = 0;

  get length(): number {
    return this.#n;
  }

  push(fileStart: number, fileEnd: number, first: number, count: number): void {
    if (4 * (this.#n + 1) > this.#rows.length) {
      const bigger = new Float64Array(this.#rows.length * 2);
      bigger.set(this.#rows);
      this.#rows = bigger;
    }
    this.#rows.set([fileStart, fileEnd, first, count], 4 * this.#n++);
  }

  at(i: number): { fileStart: number; fileEnd: number; first: number; count: number } {
    const r = this.#rows;
    return { fileStart: r[4 * i]!, fileEnd: r[4 * i + 1]!, first: r[4 * i + 2]!, count: r[4 * i + 3]! };
  }

  /** The row whose chunks hold blob offset `pos` (pos below the last chunk boundary). */
  find(pos: number): number {
    let lo = 0;
    let hi = this.#n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#rows[4 * mid + 2]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}
