// Every recipe in docs/API.md is a file under examples/; each runs here as a
// user would run it (node dist/examples/NAME.js DIR), and what it prints is
// checked, so the guide cannot drift from the code.
import test from 'ava';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { tempDir } from './helpers/store.js';

const run = promisify(execFile);

async function example(t: Parameters<typeof tempDir>[0], name: string): Promise<string> {
  const file = fileURLToPath(new URL(`../examples/${name}.js`, import.meta.url));
  const { stdout } = await run(process.execPath, [file, tempDir(t)], { timeout: 120_000 });
  t.log(stdout.trim());
  return stdout;
}

test('sync two stores: a pull and a push move only the chunks around an edit', async (t) => {
  const out = await example(t, 'sync-two-stores');
  const pulled = /pulled \w+: (\d+) bytes received, (\d+) reused/.exec(out);
  const pushed = /pushed \w+: (\d+) bytes sent, (\d+) reused by the server/.exec(out);
  t.truthy(pulled && pushed, out);
  t.true(Number(pulled![1]) < 256 * 1024, 'only the edited chunks travel');
  t.is(Number(pulled![1]) + Number(pulled![2]), 4 * 1024 * 1024);
  t.true(Number(pushed![1]) < 256 * 1024);
});

test('heal a damaged blob: fsck records the damage, a read of it fails with its code, a pull heals it', async (t) => {
  const out = await example(t, 'heal-damaged-blob');
  t.regex(out, /damaged: blob \w+ bytes \d+\.\.\d+ \(corrupt-fragment/);
  t.regex(out, /a read of the whole blob fails: ERR_BLOB_DAMAGED/);
  t.regex(out, /healed [1-9]\d* bytes; damaged now: "none"/);
  t.regex(out, /fsck --verify: 0 problems, 0 damaged blobs/);
});

test('GC from cron while an app holds the store open: the open reader keeps its fragments until it closes', async (t) => {
  const out = await example(t, 'gc-from-cron');
  t.regex(out, /gc while the app reads: deleted 0 fragments/);
  t.regex(out, /the app read all 1048576 bytes of the deleted blob; \w+ is still here: true/);
  t.regex(out, /gc after the reader closed: deleted 1 fragment \(/);
});

test('resumable upload (library): a SIGKILLed upload resumes from its last flush and finalizes with the announced root', async (t) => {
  const out = await example(t, 'resumable-upload');
  t.regex(out, /after the crash the blob holds 3145728 durable bytes/);
  t.regex(out, /finalized c0ffee00c0ffee00c0ffee00c0ffee00: 5242880 bytes, root [0-9a-f]{64}, as announced: true/);
});

test('HTTP upload: a request body streams into a blob; a cut request keeps what arrived and the rest finalizes with the sent root', async (t) => {
  const out = await example(t, 'http-upload');
  const held = /the server holds (\d+) bytes durably/.exec(out);
  t.truthy(held, out);
  t.true(Number(held![1]) > 0 && Number(held![1]) <= 2.5 * 1024 * 1024);
  t.regex(out, /second PUT: 204; finalized true, 6291456 bytes/);
  t.regex(out, /as sent: true/);
});

test('many sources: a pull from the three servers a signpost names, one with damaged bytes on its disk, drops that one and completes', async (t) => {
  const out = await example(t, 'many-sources');
  const pulled = /pulled \w+: root [0-9a-f]{64}, (\d+) bytes received for (\d+) lacking/.exec(out);
  t.truthy(pulled, out);
  t.true(Number(pulled![1]) <= 1.1 * Number(pulled![2]), 'little more than what was lacking');
  t.regex(out, /gamma: dropped, ERR_HASH_MISMATCH/);
  t.regex(out, /alpha: \d+ chunks/);
  t.regex(out, /beta: \d+ chunks/);
  t.regex(out, /the laptop's copy is the blob: true/);
});
