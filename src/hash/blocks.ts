// The memory that blocks of input live in on their way to the hashing
// thread (src/hash/pool.ts) and back: recycled buffers, and slots of a
// shared memory that the chunker scans in place.

/** The size of a recycled buffer (see recycledBuffer), and of a shared slot. */
export const RECYCLED_BYTES = 1024 * 1024;
/** Recycled buffers kept free, at most (what an idle process keeps of them: 16 MiB). */
const MAX_FREE = 16;
/** Buffers that go back to the free list once the hashing thread is done with them. */
const recyclable = new WeakSet<ArrayBuffer>();
const free: ArrayBuffer[] = [];

/**
 * A Buffer of `n` bytes (at most RECYCLED_BYTES) over memory that the
 * hashing thread, once it has hashed and written it, hands back for the
 * next one: a receiver that fills a buffer per 1 MiB received and gives it
 * to a writer made the main thread's garbage collector run a full
 * collection every few MiB.
 */
export function recycledBuffer(n: number): Buffer {
  if (n > RECYCLED_BYTES) throw new RangeError(`a recycled buffer holds at most ${RECYCLED_BYTES} bytes`);
  let ab = free.pop();
  if (!ab) {
    ab = new ArrayBuffer(RECYCLED_BYTES);
    recyclable.add(ab);
  }
  return Buffer.from(ab, 0, n);
}

/** Whether `buf` is a recycled buffer's memory: given to the hashing thread, it is sent whole and comes back. */
export function isRecycled(buf: ArrayBufferLike): boolean {
  return buf instanceof ArrayBuffer && recyclable.has(buf);
}

/** Memory made by givenBuffer. */
const giveable = new WeakSet<ArrayBuffer>();

/**
 * A Buffer of `n` bytes over memory of its own (not zeroed), which whoever
 * fills it means to give away whole: BlobWriter.appendVerified's chunks
 * lying end to end over all of it go to the hashing thread without a copy
 * (as a recycled buffer's do), and it is not used again.
 */
export function givenBuffer(n: number): Buffer {
  const b = Buffer.allocUnsafeSlow(n);
  giveable.add(b.buffer as ArrayBuffer);
  return b;
}

/** Whether `buf` is a givenBuffer's memory. */
export function isGiven(buf: ArrayBufferLike): boolean {
  return buf instanceof ArrayBuffer && giveable.has(buf);
}

/** The shared region (see shareSlots): its memory, the offsets of the slots not in use, and of those handed out by blockBuffer and not given to the hashing thread yet. */
let shared: { mem: SharedArrayBuffer; at: number; slots: number[]; out: Set<number> } | undefined;

/**
 * Slots of RECYCLED_BYTES in `mem` (a WebAssembly memory shared with the
 * hashing thread: src/chunker/gear-wasm.ts), from byte `at`, `count` of
 * them, for blockBuffer. A block read into a slot is scanned by the chunker
 * where it lies and read by the hashing thread where it lies: no copy into
 * the chunker's memory (a tenth of the main thread's time on a second put:
 * the bytes were just read, out of cache) and no transfer each way. Once.
 */
export function shareSlots(mem: SharedArrayBuffer, at: number, count: number): void {
  if (shared) return;
  shared = { mem, at, slots: Array.from({ length: count }, (_, i) => at + (count - 1 - i) * RECYCLED_BYTES), out: new Set() };
}

/**
 * A Buffer of `n` bytes (at most RECYCLED_BYTES) for a block of input that
 * goes to the hashing thread as given (HashJob.hashBlock with `give`), and
 * that nothing writes to once given: a shared slot while one is free (see
 * shareSlots), otherwise a recycled buffer. One that is not given after all
 * (a failed append) goes to dropBlock, or its slot is lost to this process.
 */
export function blockBuffer(n: number): Buffer {
  const at = n <= RECYCLED_BYTES ? shared?.slots.pop() : undefined;
  if (at === undefined) return recycledBuffer(n);
  shared!.out.add(at);
  return Buffer.from(shared!.mem, at, n);
}

/** The slot (its offset) that `bytes` lie in, if they lie in a shared slot: given to the hashing thread now, which hands it back. */
export function giveSlot(bytes: Uint8Array): number | undefined {
  if (!shared || bytes.buffer !== shared.mem) return undefined;
  const at = shared.at + Math.floor((bytes.byteOffset - shared.at) / RECYCLED_BYTES) * RECYCLED_BYTES;
  shared.out.delete(at);
  return at;
}

/** A block from blockBuffer that was not given to the hashing thread: its slot is free again (nothing if it was given). */
export function dropBlock(bytes: Uint8Array): void {
  if (!shared || bytes.buffer !== shared.mem) return;
  const at = shared.at + Math.floor((bytes.byteOffset - shared.at) / RECYCLED_BYTES) * RECYCLED_BYTES;
  if (shared.out.delete(at)) shared.slots.push(at);
}

/** The hashing thread is done with a block: a recycled buffer (`buf`) or a slot (`slot`) is free again. */
export function giveBack(buf: ArrayBuffer | undefined, slot: number | undefined): void {
  if (slot !== undefined) shared?.slots.push(slot);
  else if (buf && free.length < MAX_FREE) {
    recyclable.add(buf);
    free.push(buf);
  }
}

/** @internal Tests: how many shared slots are free (undefined where memory is not shared). */
export function freeSlots(): number | undefined {
  return shared?.slots.length;
}
