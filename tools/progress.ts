/**
 * A one-line progress bar on stderr (bytes, rate, ETA), only when stderr is
 * a terminal; silent otherwise, so scripts and logs get clean output.
 */
export class Progress {
  readonly #label: string;
  readonly #total: number | undefined;
  readonly #on: boolean;
  readonly #t0 = performance.now();
  #done = 0;
  #last = 0;

  constructor(label: string, total?: number, enabled = process.stderr.isTTY === true) {
    this.#label = label;
    this.#total = total;
    this.#on = enabled;
  }

  add(n: number): void {
    this.set(this.#done + n);
  }

  set(done: number): void {
    this.#done = done;
    if (!this.#on) return;
    const now = performance.now();
    if (now - this.#last < 100) return;
    this.#last = now;
    this.#draw();
  }

  #draw(): void {
    const secs = (performance.now() - this.#t0) / 1000;
    const rate = secs > 0 ? this.#done / secs : 0;
    let line = `${this.#label} ${fmtBytes(this.#done)}`;
    if (this.#total) {
      const f = Math.min(1, this.#done / this.#total);
      const width = 24;
      line = `${this.#label} [${'#'.repeat(Math.round(f * width)).padEnd(width)}] ${(f * 100).toFixed(0)}% ${fmtBytes(this.#done)}/${fmtBytes(this.#total)}`;
      if (rate > 0 && f < 1) line += ` ETA ${Math.ceil((this.#total - this.#done) / rate)}s`;
    }
    line += ` ${fmtBytes(rate)}/s`;
    process.stderr.write(`\r${line.slice(0, (process.stderr.columns ?? 100) - 1)}\x1b[K`);
  }

  end(): void {
    if (!this.#on) return;
    this.#draw();
    process.stderr.write('\n');
  }
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}

/** "1 blob", "2 blobs": a count and its noun (`plural` for nouns that do not take an s). */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}
