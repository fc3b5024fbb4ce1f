import fs from 'node:fs';

/**
 * The CPU time the calling thread has run, in nanoseconds, or undefined
 * where the kernel does not say (not Linux, or no schedstat). The writer
 * uses it to share hashing between its two threads by the time each
 * actually ran: a wait for the other thread says little on a loaded
 * machine, where a thread that is runnable but not running also makes the
 * other wait.
 *
 * Linux's /proc/thread-self/schedstat starts with the thread's time on a
 * CPU in nanoseconds. /proc/thread-self names the thread that opens it, so
 * each thread keeps a descriptor of its own (this module is loaded once per
 * thread) and reads it again from offset 0: one pread per call.
 */
let fd: number | undefined | null;
const buf = Buffer.alloc(96);

export function threadCpuNs(): number | undefined {
  if (fd === null) return undefined;
  try {
    fd ??= fs.openSync('/proc/thread-self/schedstat', 'r');
    const n = fs.readSync(fd, buf, 0, buf.length, 0);
    const ns = Number(buf.toString('latin1', 0, n).split(' ', 1)[0]);
    if (Number.isSafeInteger(ns)) return ns;
  } catch {
    // Any failure (no such file: not Linux, or no schedstat; not readable; EMFILE) means no figures, and no
    // more tries. Deliberately every error: the figures only steer how work is shared, and a write must not
    // fail for want of them.
  }
  const open = fd;
  fd = null;
  if (open) fs.close(open, () => {});
  return undefined;
}
