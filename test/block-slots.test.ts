// Blocks of input read into the chunker's shared memory (src/hash/blocks.ts):
// scanned where they lie, read by the hashing thread where they lie, and
// every slot back once a put is done, failed or aborted.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Chunker } from '../src/chunker/fastcdc.js';
import { SLOT_COUNT, gearWasm } from '../src/chunker/gear-wasm.js';
import { blockBuffer, dropBlock, freeSlots } from '../src/hash/blocks.js';
import '../src/blob/input.js'; // shares the slots
import { BlobStore, sha256, toHex } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { codeOf, readAll, tempDir } from './helpers/store.js';

const MiB = 1024 * 1024;

/** Waits (up to 5 s) until every slot is free; returns how many are. */
async function slotsBack(): Promise<number | undefined> {
  for (let i = 0; i < 100 && freeSlots() !== SLOT_COUNT; i++) await new Promise((r) => setTimeout(r, 50));
  return freeSlots();
}

test.serial('a block in a shared slot is chunked where it lies, with the cuts of the JavaScript scan', (t) => {
  if (!gearWasm?.shared) return t.pass('no shared WebAssembly memory here: blocks are copied into the scan buffer');
  const bytes = prngBytes('slot-scan', MiB);
  const block = blockBuffer(MiB);
  try {
    t.true(block.buffer === gearWasm.shared);
    block.set(bytes);
    const wasm = new Chunker().push(block);
    Chunker.jsOnly = true;
    let js: number[];
    try {
      js = new Chunker().push(bytes);
    } finally {
      Chunker.jsOnly = false;
    }
    t.true(wasm.length > 4);
    t.deepEqual(wasm, js);
    // A piece that starts inside a slot (not at its start) is scanned from where it starts.
    const at = 12345;
    t.deepEqual(new Chunker().push(block.subarray(at)), (Chunker.jsOnly = true, new Chunker().push(bytes.subarray(at))));
  } finally {
    Chunker.jsOnly = false;
    dropBlock(block);
  }
  t.is(freeSlots(), SLOT_COUNT);
});

test.serial('puts of files give every slot back: after a put, after an aborted put, and with four writers at once (more blocks than slots) every byte is stored', async (t) => {
  if (!gearWasm?.shared) return t.pass('no shared WebAssembly memory here');
  const dir = tempDir(t);
  const files = [0, 1, 2, 3].map((i) => {
    const f = path.join(dir, `in-${i}`);
    fs.writeFileSync(f, prngBytes(`slots-${i}`, 12 * MiB + 777 * i));
    return f;
  });
  const store = await BlobStore.open(path.join(dir, 'store'));
  t.teardown(() => store.close());
  t.is(freeSlots(), SLOT_COUNT);

  const w = await store.newBlobWriter();
  await w.appendBytes({ file: files[0]! });
  await w.close();
  const one = w.name;
  t.is(await slotsBack(), SLOT_COUNT);
  t.true((await readAll(store, one)).equals(fs.readFileSync(files[0]!)));

  // Aborted once the first blocks are in: blocks read ahead and the one in hand go back.
  const big = path.join(dir, 'big');
  fs.writeFileSync(big, prngBytes('slots-big', 64 * MiB));
  const ac = new AbortController();
  const a = await store.newBlobWriter();
  const poll = setInterval(() => a.size >= 2 * MiB && ac.abort(), 0);
  const code = await codeOf(a.appendBytes({ file: big }, { signal: ac.signal }));
  clearInterval(poll);
  t.is(code, 'ERR_ABORTED');
  t.true(a.size < 64 * MiB);
  await a.closeWithoutFinalize();
  t.is(await slotsBack(), SLOT_COUNT);

  const names = await Promise.all(
    files.map(async (file) => {
      const x = await store.newBlobWriter();
      await x.appendBytes({ file });
      await x.close();
      return x.name;
    }),
  );
  t.is(await slotsBack(), SLOT_COUNT);
  for (const [i, name] of names.entries()) {
    const want = fs.readFileSync(files[i]!);
    const got = await readAll(store, name);
    t.is(toHex(sha256(got)), toHex(sha256(want)), `file ${i}`);
  }
});
