// Found in the twelfth session.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HashJob } from '../src/hash/pool.js';
import { MerkleHasher } from '../src/hash/merkle.js';
import { prngBytes } from '../tools/data.js';
import { faultStore } from './helpers/faults.js';

const MiB = 1024 * 1024;

// CI failed once (review-session8b's fail-resume test: "resumed at 0"): a checkpoint's `state` waited for the
// leaf helper's share before it, a later read failed meanwhile on the hashing thread, and the state was answered
// with that later failure, so no checkpoint of the bytes before the failure became durable.
test.serial('a state asked while the leaf helper has a share before it is answered, even if a read after it fails meanwhile; the job fails after', async (t) => {
  // The helper's share is read slowly (faultfs: 10 ms a read), so that the read after the state, hashed on the
  // hashing thread, fails while the share is still out.
  const fault = await faultStore(t);
  if (!fault) return;
  const dir = fault.root;
  fault.fail('slowread ^/bytes$');
  const file = path.join(dir, 'bytes');
  const bytes = prngBytes('session12 state before a failure', 24 * MiB);
  fs.writeFileSync(file, bytes);
  const read = (job: HashJob, from: number, n: number, f = file) => job.send({ files: [f, from, n], length: n }, true, [], true);
  const rounds: string[] = [];
  for (let round = 0; round < 2; round++) {
    const job = new HashJob();
    read(job, 0, 3 * MiB); // a long run: the helper starts
    await job.state();
    await sleep(300); // the helper online
    // A share for the helper, a state behind it, then a read of a file that is not there: all sent in one turn,
    // so the hashing thread meets the failing read (hashed there: the helper took the last read) while the helper
    // still hashes its share.
    read(job, 3 * MiB, 8 * MiB); // the helper's share (its first: it takes it whole)
    const st = job.state().then((v) => v, (e: unknown) => e as Error);
    const want = new MerkleHasher();
    want.update(bytes.subarray(0, 11 * MiB));
    read(job, 11 * MiB, 4 * MiB, path.join(dir, 'gone'));
    const got = await job.state().then(
      (s) => s,
      (e: unknown) => e as Error,
    );
    const first = await st;
    const code = (v: unknown) => (v instanceof Error ? ((v as NodeJS.ErrnoException).code ?? v.message) : 'answered');
    rounds.push(`${code(first)} / ${code(got)}`);
    t.false(first instanceof Error, `round ${round}: the state before the failing read: ${code(first)}`);
    if (!(first instanceof Error)) t.deepEqual(first, want.state(), `round ${round}: the state of the bytes before it`);
    t.true(got instanceof Error, `round ${round}: a state after the failing read fails`);
    await job.close().catch(() => {});
  }
  t.log(rounds.join(', '));
});
