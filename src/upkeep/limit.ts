/**
 * Runs `fn` over `items` with at most `limit` calls in flight, in order of
 * start. File system calls go to libuv's thread pool; a few at once keep it
 * busy where one at a time would wait on each.
 */
export async function forEachLimit<T>(items: AsyncIterable<T> | Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const running = new Set<Promise<void>>();
  let failed: unknown;
  for await (const item of items) {
    if (failed !== undefined) break;
    const p: Promise<void> = fn(item).then(
      () => {
        running.delete(p);
      },
      (e: unknown) => {
        running.delete(p);
        failed ??= e;
      },
    );
    running.add(p);
    if (running.size >= limit) await Promise.race(running);
  }
  await Promise.all(running);
  if (failed !== undefined) throw failed;
}
