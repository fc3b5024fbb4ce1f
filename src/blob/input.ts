import fs from 'node:fs/promises';
import { CabError, checkSignal, inputFileError } from '../errors.js';
import { RECYCLED_BYTES, blockBuffer, dropBlock, shareSlots } from '../hash/blocks.js';
import { SLOTS_AT, SLOT_BYTES, SLOT_COUNT, gearWasm } from '../chunker/gear-wasm.js';
import type { Descriptor } from '../format/descriptor.js';

// Kept in errors.ts (light: connect's checks load no blob code); the blob code's own callers find it here.
export { checkSignal };

// Blocks of input go into the chunker's memory where the hashing thread shares it (hash/blocks.ts).
if (gearWasm?.shared && SLOT_BYTES === RECYCLED_BYTES) shareSlots(gearWasm.shared, SLOTS_AT, SLOT_COUNT);

/**
 * What appendBytes takes: bytes (a Uint8Array; a Buffer is one), or a range
 * of a local file. Other views (Uint16Array, DataView, ...) and ArrayBuffers
 * are ERR_BAD_ARGUMENT: the bytes of a wider typed array depend on the
 * machine's byte order, so take a Uint8Array over them on purpose
 * (`new Uint8Array(v.buffer, v.byteOffset, v.byteLength)`).
 */
export type AppendItem = Uint8Array | { file: string; offset?: number; size?: number };

/** Whether `x` is binary data that is not a Uint8Array: refused with a word on what to do. */
function isOtherBinary(x: unknown): boolean {
  return !(x instanceof Uint8Array) && (ArrayBuffer.isView(x) || x instanceof ArrayBuffer || x instanceof SharedArrayBuffer);
}

/** Options of an append: appendBytes (as its last argument), appendBlob, appendStream. */
export interface AppendOptions {
  /**
   * Cancels the append. It stops between blocks (4 MiB at most) and rejects
   * with ERR_ABORTED; the bytes appended before it stay, so the blob holds a
   * prefix of what was asked (`size` says how long) and the writer stays
   * open. A signal aborted before the call changes nothing.
   */
  signal?: AbortSignal;
}

/**
 * Splits appendBytes' arguments into items and options. The last argument
 * is the options if it is an object with no `file` key; it may then hold
 * `signal` only, so an item with a misspelt key is an error rather than
 * options that append nothing.
 */
export function splitAppendArgs(args: unknown[]): { items: AppendItem[]; signal: AbortSignal | undefined } {
  const last = args[args.length - 1];
  if (last === null || typeof last !== 'object' || last instanceof Uint8Array || isOtherBinary(last) || 'file' in last) return { items: args as AppendItem[], signal: undefined };
  const unknown = Object.keys(last).filter((k) => k !== 'signal');
  if (unknown.length > 0) {
    throw new CabError('ERR_BAD_ARGUMENT', `appendBytes takes Uint8Arrays, { file, offset?, size? } objects and last { signal }, not an object with ${unknown.join(', ')}`);
  }
  return { items: args.slice(0, -1) as AppendItem[], signal: checkSignal(last, 'appendBytes') };
}

/** Input is read and processed in blocks of this size. */
export const READ_BLOCK = 1024 * 1024;

/** An appendBytes item, checked: bytes, or an open file and a range that lies inside it. */
export type Input = { bytes: Uint8Array } | { fh: fs.FileHandle; offset: number; size: number; file: string };

/** A non-negative safe integer, or ERR_NEGATIVE_POSITION. */
export function checkCount(x: unknown, what: string): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
    throw new CabError('ERR_NEGATIVE_POSITION', `${what} must be a non-negative integer, not ${String(x)}`, { found: x });
  }
  return x;
}

/**
 * Checks every appendBytes item and opens its file, before anything is
 * appended: a bad item changes nothing. On failure the files opened so far
 * are closed; on success the caller closes them (closeInputs).
 */
export async function openInputs(items: AppendItem[]): Promise<Input[]> {
  const inputs: Input[] = [];
  try {
    for (const item of items) {
      if (item instanceof Uint8Array) {
        inputs.push({ bytes: item });
        continue;
      }
      if (isOtherBinary(item)) {
        const kind = (item as object).constructor?.name ?? 'binary data';
        throw new CabError('ERR_BAD_ARGUMENT', `appendBytes takes bytes as a Uint8Array or Buffer, not a ${kind}: wrap it as new Uint8Array(x.buffer, x.byteOffset, x.byteLength) if its bytes are what you mean`);
      }
      if (item === null || typeof item !== 'object' || typeof item.file !== 'string') {
        throw new CabError('ERR_BAD_ARGUMENT', 'appendBytes takes Uint8Arrays and { file, offset?, size? } objects');
      }
      const offset = checkCount(item.offset ?? 0, 'offset');
      let fh: fs.FileHandle;
      try {
        fh = await fs.open(item.file, 'r');
      } catch (e) {
        throw inputFileError(e, item.file);
      }
      const input = { fh, offset, size: 0, file: item.file };
      inputs.push(input);
      const st = await fh.stat();
      if (!st.isFile()) throw new CabError('ERR_NO_SUCH_FILE', `not a regular file: ${item.file}`, { path: item.file });
      const size = item.size === undefined || item.size === -1 ? st.size - offset : checkCount(item.size, 'size');
      if (offset > st.size || offset + size > st.size) {
        throw new CabError('ERR_ILLEGAL_POSITION', `range [${offset}, ${offset + size}) is past the end of ${item.file} (${st.size} bytes)`, {
          path: item.file,
          offset,
          expected: st.size,
        });
      }
      input.size = size;
    }
  } catch (e) {
    await closeInputs(inputs);
    throw e;
  }
  return inputs;
}

export async function closeInputs(inputs: Input[]): Promise<void> {
  for (const input of inputs) if ('fh' in input) await input.fh.close().catch(() => {});
}

/**
 * Hands the inputs' bytes to `feed` in blocks of at most READ_BLOCK, in
 * order. Small byte arrays in a row (a network batch of chunks, say) are
 * gathered into one block: one pass through the chunker and one hand-off to
 * the hashing thread. `give`: the block is `feed`'s to keep. `ours`: so are
 * the byte arrays (a write stream's blocks), which go as they are.
 */
export async function feedInputs(inputs: Input[], feed: (block: Uint8Array, give: boolean) => Promise<void>, ours = false): Promise<void> {
  let gather: Uint8Array[] = [];
  let gathered = 0;
  const flushGather = async () => {
    if (gathered === 0) return;
    const block = gather.length === 1 ? gather[0]! : Buffer.concat(gather, gathered);
    const ours = gather.length > 1;
    gather = [];
    gathered = 0;
    await feed(block, ours);
  };
  for (const input of inputs) {
    if ('bytes' in input) {
      if (ours) {
        await flushGather();
        await feed(input.bytes, true);
        continue;
      }
      if (input.bytes.length < READ_BLOCK / 4) {
        if (gathered + input.bytes.length > READ_BLOCK) await flushGather();
        gather.push(input.bytes);
        gathered += input.bytes.length;
        continue;
      }
      await flushGather();
      for (let off = 0; off < input.bytes.length; off += READ_BLOCK) {
        await feed(input.bytes.subarray(off, off + READ_BLOCK), false);
      }
    } else {
      await flushGather();
      for await (const block of readBlocks(input.size, READ_BLOCK, (pos, n) => readFile(input.fh, input.offset + pos, n), dropBlock)) {
        try {
          await feed(block, true);
        } catch (e) {
          dropBlock(block); // not given, if it failed before the hashing thread had it
          throw e;
        }
      }
    }
  }
  await flushGather();
}

/**
 * Checks appendBlob's range [offset, offset + size) of blob `blob` (size
 * -1: to its end) against its descriptor `src`. Returns the size.
 */
export function checkBlobRange(src: Descriptor, blob: string, offset: number, size: number): number {
  const n = size === -1 ? src.size - offset : size;
  if (offset > src.size || offset + n > src.size) {
    throw new CabError('ERR_ILLEGAL_POSITION', `range [${offset}, ${offset + n}) is past the end of blob ${blob} (${src.size} bytes)`, {
      blob,
      offset,
      expected: src.size,
    });
  }
  if (src.damagedAt !== undefined && offset + n > src.damagedAt) {
    throw new CabError('ERR_BLOB_DAMAGED', `blob ${blob} is damaged from byte ${src.damagedAt}`, { blob, offset: src.damagedAt });
  }
  return n;
}

/** Reads readBlocks keeps going ahead of the block its caller works on. */
const READ_AHEAD = 2;

/**
 * Yields `total` bytes in blocks from `read(pos, n)`, READ_AHEAD blocks
 * ahead, so that I/O overlaps the caller's work: one slow read (a cold
 * page cache, a disk shared with others) does not stall it. `drop`: what
 * becomes of a block read ahead and never yielded (the caller stopped).
 */
export async function* readBlocks(total: number, blockSize: number, read: (pos: number, n: number) => Promise<Uint8Array>, drop?: (block: Uint8Array) => void): AsyncGenerator<Uint8Array> {
  let pos = 0;
  const ahead: Array<Promise<Uint8Array>> = [];
  const fill = () => {
    while (ahead.length < READ_AHEAD && pos < total) {
      const n = Math.min(blockSize, total - pos);
      const r = read(pos, n);
      r.catch(() => {}); // awaited below; this only keeps an abandoned read from being unhandled
      ahead.push(r);
      pos += n;
    }
  };
  fill();
  try {
    while (ahead.length > 0) {
      const cur = await ahead.shift()!;
      fill();
      yield cur;
    }
  } finally {
    for (const r of ahead.splice(0)) r.then((b) => drop?.(b), () => {});
  }
}

/**
 * Bytes [position, position + n) of a file being appended; ERR_ILLEGAL_POSITION
 * if it shrank meanwhile. Read into a block buffer (a shared slot or a
 * recycled buffer), which the hashing thread hands back: fresh memory for
 * every block cost a page fault per 4 KiB.
 */
async function readFile(fh: fs.FileHandle, position: number, n: number): Promise<Buffer> {
  const buf = n <= RECYCLED_BYTES ? blockBuffer(n) : Buffer.allocUnsafe(n);
  try {
    for (let done = 0; done < n; ) {
      const { bytesRead } = await fh.read(buf, done, n - done, position + done);
      if (bytesRead === 0) throw new CabError('ERR_ILLEGAL_POSITION', 'the file shrank while it was being read', { offset: position + done });
      done += bytesRead;
    }
  } catch (e) {
    dropBlock(buf);
    throw e;
  }
  return buf;
}
