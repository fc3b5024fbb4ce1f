// A writer's pins of the fragments it made go once a durable record
// references them: its pins file stays small however long it writes, and
// GC running between its checkpoints still keeps every byte.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { prngBytes } from '../tools/data.js';
import { leasesDir } from './helpers/paths.js';
import { readAll, tempStore } from './helpers/store.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** The most fragments any pins file of the store names now. */
function pinnedNow(dir: string): number {
  let most = 0;
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.pins'))) {
    const pins = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as { fragments: string[] };
    most = Math.max(most, pins.fragments.length);
  }
  return most;
}

test('a long writer pins only the fragments no durable record names yet; GC between its checkpoints keeps every byte', async (t) => {
  const store = await tempStore(t, { fragmentSize: 256 * KiB });
  const data = prngBytes('pins durable', 16 * MiB);
  const w = await store.newBlobWriter();
  let most = 0;
  for (let at = 0; at < data.length; at += MiB) {
    await w.appendBytes(data.subarray(at, at + MiB));
    await w.flush();
    most = Math.max(most, pinnedNow(leasesDir(store)));
    const gc = await store.gc();
    t.is(gc.fragmentsDeleted, 0, `GC after ${at + MiB} bytes deletes none of the writer's fragments`);
  }
  await w.close();
  t.log(`at most ${most} fragments pinned at once (16 fragments written, one per flush)`);
  t.true(most <= 8, `the pins file stays small (${most} fragments at most)`);
  t.true((await readAll(store, w.name)).equals(data));
  t.deepEqual((await store.fsck({ verify: true })).problems, []);
});
