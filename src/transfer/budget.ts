/**
 * A number of bytes shared by many users (a server's connections), handed
 * out first come, first served: a request waits until its bytes are free,
 * and no later request overtakes it, so a large one is not starved by small
 * ones. It bounds memory no matter how many ask.
 */
export class ByteBudget {
  readonly total: number;
  #free: number;
  readonly #queue: Array<{ n: number; grant: () => void }> = [];

  constructor(total: number) {
    this.total = total;
    this.#free = total;
  }

  /** Bytes not handed out. */
  get free(): number {
    return this.#free;
  }

  /**
   * Waits for `n` bytes (a request for more than the total waits for all of
   * it) and resolves with the function that gives them back; calling that
   * more than once gives them back once.
   */
  async take(n: number): Promise<() => void> {
    const want = Math.min(n, this.total);
    if (this.#queue.length === 0 && this.#free >= want) this.#free -= want;
    else await new Promise<void>((grant) => this.#queue.push({ n: want, grant }));
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.#free += want;
      this.#pump();
    };
  }

  #pump(): void {
    while (this.#queue.length > 0 && this.#free >= this.#queue[0]!.n) {
      const next = this.#queue.shift()!;
      this.#free -= next.n;
      next.grant();
    }
  }
}
