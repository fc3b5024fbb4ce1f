// Child processes for the GC tests. Usage: node gc-child.js MODE STORE [ARGS...]
//   hold-reader STORE NAME   open a reader on NAME, print "ready", then wait to be killed
//   slow-writer STORE        write a blob without ever reaching a checkpoint, print "writing", wait
//   gc-loop STORE SECONDS    run gc in a loop; print "gc N" at the end
//   workload STORE SECONDS   write (with dedup), appendBlob, read, delete; verify every read
//   put-loop STORE ROUNDS    open the store anew (a new lease), put a small blob, close; ROUNDS times
import { BlobStore, merkleRoot, toHex, isCabError } from '../../src/index.js';
import { prngBytes, prngInts } from '../../tools/data.js';
import { readAll as readAllOf } from './store.js';

const [mode, root, arg] = process.argv.slice(2);
const store = await BlobStore.open(root!, { fragmentSize: 256 * 1024 });

const readAll = (name: string) => readAllOf(store, name);

if (mode === 'hold-reader') {
  const r = await store.newBlobReader(arg!);
  const b = Buffer.alloc(16);
  await r.readAt(b, 0);
  console.log('ready');
  setInterval(() => {}, 1000);
} else if (mode === 'slow-writer') {
  const w = await store.newBlobWriter();
  // Enough to start a fragment in tmp/, not enough to seal one.
  await w.appendBytes(prngBytes('slow writer', 100_000));
  console.log('writing');
  setInterval(() => {}, 1000);
} else if (mode === 'gc-loop') {
  const until = Date.now() + Number(arg) * 1000;
  let n = 0;
  while (Date.now() < until) {
    await store.gc({ wait: true });
    n++;
  }
  console.log(`gc ${n}`);
  await store.close();
} else if (mode === 'put-loop') {
  let failures = 0;
  for (let i = 0; i < Number(arg); i++) {
    try {
      const s = await BlobStore.open(root!);
      const w = await s.newBlobWriter();
      await w.appendBytes(prngBytes(`put-loop ${i}`, 2000));
      await w.close();
      await s.close();
    } catch (e) {
      failures++;
      console.log(`round ${i}: ${isCabError(e) ? e.code : ''} ${(e as Error).message}`);
    }
  }
  console.log(`done failures=${failures}`);
  await store.close();
} else if (mode === 'workload') {
  const until = Date.now() + Number(arg) * 1000;
  const rnd = prngInts(99);
  const base = prngBytes('workload base', 3 * 1024 * 1024);
  const live = new Map<string, Buffer>();
  let ops = 0;
  let failures = 0;
  const fail = (what: string) => {
    failures++;
    console.log(`FAIL ${what}`);
  };
  while (Date.now() < until) {
    ops++;
    const op = rnd(10);
    const names = [...live.keys()];
    try {
      if (op < 3 || names.length < 2) {
        // a new blob that shares most bytes with base (dedup against existing fragments)
        const at = rnd(base.length - 200_000);
        const bytes = Buffer.concat([base.subarray(0, at), prngBytes(`edit ${ops}`, 1 + rnd(5000)), base.subarray(at + rnd(3000))]);
        const w = await store.newBlobWriter();
        await w.appendBytes(bytes);
        await w.close();
        live.set(w.name, bytes);
      } else if (op < 5) {
        // a blob built from ranges of others, then its source deleted right away
        const src = names[rnd(names.length)]!;
        const bytes = live.get(src)!;
        const off = rnd(bytes.length / 2);
        const w = await store.newBlobWriter();
        await w.appendBlob(src, off, bytes.length - off);
        await w.appendBytes(prngBytes(`tail ${ops}`, 100));
        await w.close();
        live.set(w.name, Buffer.concat([bytes.subarray(off), prngBytes(`tail ${ops}`, 100)]));
        await store.deleteBlob(src);
        live.delete(src);
      } else if (op < 8) {
        const name = names[rnd(names.length)]!;
        const r = await store.newBlobReader(name);
        const got = await readAll(name);
        if (!got.equals(live.get(name)!)) fail(`read of ${name} differs`);
        if (toHex(r.hash!) !== toHex(merkleRoot(live.get(name)!))) fail(`hash of ${name} differs`);
        await r.close();
      } else if (op < 9) {
        // hold a reader across a delete and a GC or two (run by the other process)
        const name = names[rnd(names.length)]!;
        const r = await store.newBlobReader(name);
        await store.deleteBlob(name);
        const expect = live.get(name)!;
        live.delete(name);
        await new Promise((res) => setTimeout(res, 50 + rnd(200)));
        const buf = Buffer.alloc(r.size);
        let at = 0;
        while (at < r.size) at += await r.readAt(buf.subarray(at), at);
        if (!buf.equals(expect)) fail(`held read of deleted ${name} differs`);
        await r.close();
      } else if (names.length > 8) {
        const name = names[rnd(names.length)]!;
        await store.deleteBlob(name);
        live.delete(name);
      }
    } catch (e) {
      fail(`op ${op}: ${isCabError(e) ? e.code : ''} ${(e as Error).stack}`);
    }
  }
  for (const [name, bytes] of live) {
    if (!(await readAll(name)).equals(bytes)) fail(`final read of ${name}`);
  }
  console.log(`done ops=${ops} failures=${failures} live=${[...live.keys()].join(',')}`);
  await store.close();
}
