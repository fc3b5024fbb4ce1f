// A writer of a bucket-backed store killed with SIGKILL in the middle of
// its uploads (issue 19), ten times: each time the next one resumes from
// the last durable byte, nothing flushed is lost, the blob ends whole and
// readable from another folder, and GC clears what the kills left in the
// bucket (fragments no record names, multipart uploads left open).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';
import { BlobStore } from '../src/index.js';
import { prngBytes, prngInts } from '../tools/data.js';
import { bucketOptions, fileBucket, objects, s3Test } from './helpers/s3.js';
import { readAll, tempDir } from './helpers/store.js';

const CHILD = fileURLToPath(new URL('./helpers/s3-writer-child.js', import.meta.url));
const KILLS = 10;
const SIZE = 100 * 1024 * 1024;

interface Run {
  ready?: number;
  flushed: number;
  final?: string;
  killedMidUpload: boolean;
}

/** Runs the child; with `killAfterUpload`, SIGKILLs it that many ms after its first upload starts. */
function run(args: string[], killAfterUpload: number | undefined): Promise<Run> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    const r: Run = { flushed: 0, killedMidUpload: false };
    let buf = '';
    c.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const [what, value] = buf.slice(0, nl).split(' ') as [string, string];
        buf = buf.slice(nl + 1);
        if (what === 'ready') r.ready = Number(value);
        else if (what === 'flushed') r.flushed = Number(value);
        else if (what === 'final') r.final = value;
        else if (what === 'upload' && killAfterUpload !== undefined && r.ready !== undefined && !r.killedMidUpload && value.includes('/cas/')) {
          r.killedMidUpload = true;
          setTimeout(() => c.kill('SIGKILL'), killAfterUpload);
        }
      }
    });
    c.on('error', reject);
    c.on('exit', () => resolve(r));
  });
}

s3Test.serial('a writer SIGKILLed 10 times mid-upload resumes each time from its durable size; GC clears what the kills left', async (t) => {
  const o = await bucketOptions(t, { syncInterval: 0, gcGrace: 0, multipartThreshold: 5 * 1024 * 1024 });
  const dir = path.join(tempDir(t), 'writer');
  const name = crypto.randomBytes(16).toString('hex');
  const seed = 's3 crash';
  const delay = prngInts(19);
  let durable = 0;
  let kills = 0;
  for (let i = 0; i < KILLS + 1; i++) {
    const r = await run([dir, JSON.stringify(o), name, seed, String(SIZE)], i < KILLS ? delay(40) : undefined);
    t.true(r.ready !== undefined && r.ready >= durable, `run ${i}: resumed at ${r.ready}, after ${durable} bytes were flushed`);
    durable = Math.max(durable, r.flushed);
    if (r.final) {
      t.is(i, KILLS, `the blob was finished only by the run that was not killed (run ${i})`);
      break;
    }
    t.true(r.killedMidUpload, `run ${i} was killed while uploading`);
    kills++;
  }
  t.is(kills, KILLS);
  const content = prngBytes(seed, SIZE);
  const other = await BlobStore.open(path.join(tempDir(t), 'reader'), { objectStore: o });
  t.teardown(() => other.close());
  t.true((await readAll(other, name)).equals(content), 'another folder reads the blob byte-exact');
  const writer = await BlobStore.open(dir, { objectStore: o });
  t.teardown(() => writer.close());
  t.deepEqual((await writer.fsck({ verify: true })).problems, [], 'fsck of the writer\'s folder is clean');
  // What the kills left: fragments uploaded that no record names, and uploads in parts left open.
  const { os } = await fileBucket();
  let open = 0;
  for await (const u of os.listUploads(o.prefix!)) if (u.key.startsWith(o.prefix!)) open++;
  const before = (await objects(`${o.prefix}cas/`)).size;
  const r = (await writer.gc()).bucket!;
  t.is(r.uploadsAborted, open, `the ${open} uploads left open are aborted`);
  t.is(r.fragmentsDeleted + r.fragmentsKept, before);
  t.is(r.fragmentsKept, new Set((await writer.snapshot(name)).extents.fragments()).size, 'only the blob\'s fragments stay');
  let left = 0;
  for await (const u of os.listUploads(o.prefix!)) if (u.key.startsWith(o.prefix!)) left++;
  t.is(left, 0);
  t.true((await readAll(other, name)).equals(content), 'and the blob is still whole');
});
