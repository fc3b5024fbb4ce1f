/**
 * LMDB ranges read a page at a time. A range iterator holds a read
 * transaction; an async stream that yielded straight from it would keep one
 * open across every await of its consumer. So each page is read whole,
 * synchronously, and the iterator is closed before the first item is yielded.
 */

/** Items read per page by the lazy streams. */
export const PAGE = 1024;

/** Up to `limit` items of `items`, read synchronously; the iterator is closed (its cursor released) after. */
export function takePage<T>(items: Iterable<T>, limit: number): T[] {
  const page: T[] = [];
  if (limit <= 0) return page;
  for (const x of items) {
    page.push(x);
    if (page.length === limit) break;
  }
  return page;
}

/**
 * Every item of a range, lazily, one page at a time. `range(last, done)`
 * opens the range again after the last item yielded (`undefined` at first)
 * or, by count, after `done` items; it must not yield `last` again.
 */
export async function* paged<T>(range: (last: T | undefined, done: number) => Iterable<T>, limit = PAGE): AsyncGenerator<T> {
  let last: T | undefined;
  let done = 0;
  for (;;) {
    const page = takePage(range(last, done), limit);
    for (const x of page) yield x;
    if (page.length < limit) return;
    last = page[page.length - 1];
    done += page.length;
  }
}
