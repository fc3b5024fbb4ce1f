import test from 'ava';
import { BlobStore, merkleRoot, toHex } from '../src/index.js';
import { runGcChild } from './helpers/children.js';
import { tempDir, readAll, collect } from './helpers/store.js';

const SECONDS = Number(process.env.CABSTORE_STRESS_SECONDS ?? 20);

test(`GC in a loop in one process while another writes, dedups, appends ranges, reads and deletes (${SECONDS} s)`, async (t) => {
  t.timeout((SECONDS + 120) * 1000);
  const dir = tempDir(t);
  await (await BlobStore.open(dir)).close(); // create it once, so the two children do not race to
  const [gc, work] = await Promise.all([runGcChild(['gc-loop', dir, String(SECONDS)]), runGcChild(['workload', dir, String(SECONDS)])]);
  t.is(gc.code, 0, gc.out);
  t.is(work.code, 0, work.out);
  t.regex(gc.out, /gc [1-9]\d*/);
  const m = /done ops=(\d+) failures=(\d+) live=(.*)/.exec(work.out);
  t.truthy(m, work.out);
  t.is(Number(m![2]), 0, work.out);
  t.true(Number(m![1]) > 50, `only ${m![1]} operations`);
  t.log(`${gc.out.trim()}, ${m![1]} workload operations`);

  // After both stop and a final GC: exactly the fragments live blobs reference.
  const store = await BlobStore.open(dir);
  t.teardown(() => store.close());
  await store.gc();
  const referenced = new Set<string>();
  const live = m![3]!.split(',').filter(Boolean).sort();
  t.deepEqual((await collect(store.listBlobIds())).sort(), live);
  for (const name of live) {
    const r = await store.newBlobReader(name);
    for (const f of r.fragments()) referenced.add(f);
    t.true(r.isFinalized);
    t.is(toHex(r.hash!), toHex(merkleRoot(await readAll(store, name))));
    await r.close();
  }
  t.deepEqual((await collect(store.listCaIds())).sort(), [...referenced].sort());
  t.is((await store.fsck({ verify: true })).problems.length, 0);
});
