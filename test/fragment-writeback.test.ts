// A fragment is written back to disk in steps as it fills (an fdatasync in
// the background every WRITEBACK_BYTES assigned), so that the fsync that
// seals it has only the last step to write. The steps must not change what
// is stored: the sealed fragment holds every byte, a discard waits for the
// step under way before it closes the file, and a put through them reads
// back and passes fsck's byte check.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { FragmentWriter, WRITEBACK_BYTES } from '../src/disk/fragments.js';
import { prngBytes } from '../tools/data.js';
import { readAll, tempDir, tempStore } from './helpers/store.js';

/** What this process's open file descriptors name. */
const openFiles = () =>
  fs.readdirSync('/proc/self/fd').map((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return ''; // closed meanwhile (the readdir's own)
    }
  });

/** Assigns `bytes` their offsets in `frag` and writes them through its fd, as the hashing thread does. */
function writeThrough(frag: FragmentWriter, bytes: Uint8Array): void {
  const at = frag.assign(bytes.length);
  for (let done = 0; done < bytes.length; ) done += fs.writeSync(frag.fd, bytes, done, bytes.length - done, at + done);
}

test('a writeback starts once WRITEBACK_BYTES are assigned, not before; the sealed fragment holds every byte', async (t) => {
  const s = await tempStore(t);
  const frag = await FragmentWriter.create(s.cas.layout);
  const piece = WRITEBACK_BYTES / 4;
  const data = prngBytes('wb', 6 * piece);
  for (let i = 0; i < 3; i++) writeThrough(frag, data.subarray(i * piece, (i + 1) * piece));
  t.false(frag.writingBack, 'three quarters of WRITEBACK_BYTES: no writeback yet');
  writeThrough(frag, data.subarray(3 * piece, 4 * piece));
  t.true(frag.writingBack, 'WRITEBACK_BYTES assigned: a writeback is under way');
  writeThrough(frag, data.subarray(4 * piece, 6 * piece)); // while it runs
  await frag.seal(s.cas);
  t.false(frag.writingBack);
  t.true(fs.readFileSync(s.cas.layout.fragment(frag.id)).equals(data), "the fragment holds every byte written");
  t.false(fs.existsSync(frag.tmpPath));
});

test('a discard while a writeback runs waits for it, then closes and removes the temp file', async (t) => {
  const s = await tempStore(t);
  const frag = await FragmentWriter.create(s.cas.layout);
  writeThrough(frag, prngBytes('wd', WRITEBACK_BYTES));
  t.true(frag.writingBack);
  await frag.discard();
  t.false(frag.writingBack, 'the writeback ended before the discard did');
  t.false(fs.existsSync(frag.tmpPath));
  t.false(openFiles().some((f) => f.startsWith(frag.tmpPath)), 'its file is closed');
  frag.writeback(); // after the discard: nothing starts
  t.false(frag.writingBack);
});

test('a put from a file whose fragments are written back in steps reads back and passes fsck with every byte checked', async (t) => {
  const s = await tempStore(t, { fragmentSize: 3 * WRITEBACK_BYTES });
  const data = prngBytes('wp', 4 * WRITEBACK_BYTES + 12345);
  const file = path.join(tempDir(t), 'in.bin');
  fs.writeFileSync(file, data);
  const w = await s.newBlobWriter();
  await w.appendBytes({ file });
  await w.close();
  t.true((await readAll(s, w.name)).equals(data), "the blob reads back");
  const report = await s.fsck({ verify: true });
  t.deepEqual(report.problems, []);
  t.deepEqual(report.damaged, []);
  t.is(report.bytesVerified, data.length);
  t.is(report.fragments, 2, 'a fragment of 3 steps and one of the rest');
  t.is(fs.readdirSync(path.join(s.root, 'tmp')).length, 0, 'no temp fragment left');
});
