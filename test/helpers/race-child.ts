// Child processes for test/race-session11.test.ts: parties that share one store and are SIGKILLed at random.
// Usage: node race-child.js MODE STORE [ARGS...]; each prints a line per thing done, "done" at the end.
//   gc-loop STORE MS                   gc (waiting for another) until MS have passed or a line comes on stdin
//   fsck-loop STORE MS                 fsck --repair until MS have passed or a line comes on stdin
//   pull STORE URL TOKEN NAME          pull NAME from the server at URL; prints "pulled NAME HASH"
//   push STORE URL TOKEN NAME          push NAME to the server at URL
//   churn STORE SEED MS SRC            until MS have passed: blobs of ranges of SRC (appendBlob) and of edits of its
//                                      bytes (dedup), then deletes them; prints "final NAME" before each delete
//   put STORE SEED SIZE NAME           write blob NAME of prngBytes(SEED, SIZE), in 64 KiB appends, flushing every 256 KiB
//                                      ("flushed SIZE"), resuming it if it is there; finalize
//   export STORE FILE NAME             export NAME to a bundle
//   import STORE FILE                  import a bundle
//   read STORE NAME                    read NAME whole (a follower if FOLLOW=1), print "read NAME BYTES SHA256"
//   name-loop STORE NAME MS SIDE       until MS have passed: SIDE 'make' makes blob NAME (20 KB) whenever it is absent,
//                                      SIDE 'rm' deletes it whenever it is there; prints "done N"
//   rm STORE NAME                      delete NAME; print "deleted" (or the error's code)
//   rm-on-line STORE NAME              print "ready", delete NAME when a line comes on stdin, print "deleted"
//   half-created STORE NAME            make NAME's descriptor as a new writer does (header durable, locked, linked into
//                                      blob/) and stop before its index entry: print "linked", wait to be killed
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { BlobStore, connect, exportBundle, importBundle, isCabError, toHex } from '../../src/index.js';
import { prngBytes, prngInts } from '../../tools/data.js';
import { encodeHeader } from '../../src/format/descriptor.js';
import { tryLockExclusive } from '../../src/disk/lock.js';

const [mode, root, ...args] = process.argv.slice(2);
const store = await BlobStore.open(root!, { fragmentSize: Number(process.env.RACE_FRAGMENT_SIZE ?? 256 * 1024) });
const say = (s: string) => process.stdout.write(`${s}\n`);
const code = (e: unknown) => (isCabError(e) ? e.code : String((e as Error).stack));

if (mode === 'gc-loop' || mode === 'fsck-loop') {
  const until = Date.now() + Number(args[0]);
  let stop = false;
  process.stdin.once('data', () => (stop = true));
  let n = 0;
  while (Date.now() < until && !stop) {
    if (mode === 'gc-loop') await store.gc({ wait: true });
    else {
      const r = await store.fsck({ repair: true });
      for (const p of r.problems) say(`problem ${p.kind} ${p.blob ?? ''} ${p.detail ?? ''}`);
    }
    n++;
  }
  say(`done ${n}`);
  process.stdin.destroy();
} else if (mode === 'pull' || mode === 'push') {
  const [url, token, name] = args as [string, string, string];
  const c = await connect(store, url, { token });
  try {
    if (mode === 'pull') {
      const r = await c.pull(name);
      const st = await store.stat(name);
      say(`pulled ${name} ${st.hash ? toHex(st.hash) : '-'} received ${r.receivedBytes} reused ${r.reusedBytes} from ${r.resumedFrom}`);
    } else {
      await c.push(name);
      say(`pushed ${name}`);
    }
  } finally {
    await c.close();
  }
} else if (mode === 'churn') {
  const [seed, ms, src] = args as [string, string, string];
  const rnd = prngInts(Number(seed));
  const until = Date.now() + Number(ms);
  let srcBytes: Buffer | undefined;
  {
    const r = await store.newBlobReader(src);
    srcBytes = Buffer.alloc(r.size);
    let at = 0;
    while (at < r.size) at += await r.readAt(srcBytes.subarray(at), at);
    await r.close();
  }
  let i = 0;
  while (Date.now() < until) {
    i++;
    try {
      const w = await store.newBlobWriter();
      if (rnd(2) === 0) {
        // Ranges of the source by reference.
        for (let k = 0; k < 3; k++) {
          const off = rnd(srcBytes.length - 1);
          await w.appendBlob(src, off, 1 + rnd(Math.min(600_000, srcBytes.length - off)));
          await w.appendBytes(prngBytes(`churn ${seed} ${i} ${k}`, rnd(3000)));
        }
      } else {
        // Its bytes, edited: chunks found in the index (dedup), the edits written anew.
        const at = rnd(srcBytes.length - 10_000);
        await w.appendBytes(Buffer.concat([srcBytes.subarray(0, at), prngBytes(`churn ${seed} ${i}`, 1 + rnd(4000)), srcBytes.subarray(at + rnd(5000))]));
      }
      await w.close();
      say(`final ${w.name}`);
      await store.deleteBlob(w.name);
    } catch (e) {
      say(`failed ${code(e)}`);
    }
  }
  say('done');
} else if (mode === 'put') {
  const [seed, size, name] = args as [string, string, string];
  const bytes = prngBytes(seed, Number(size));
  const w = (await store.has(name)) ? await store.resumeBlobWriter(name) : await store.newBlobWriter(name);
  for (let at = w.size; at < bytes.length; at += 65536) {
    await w.appendBytes(bytes.subarray(at, Math.min(bytes.length, at + 65536)));
    if ((at / 65536) % 4 === 3) {
      await w.flush();
      say(`flushed ${w.size}`);
    }
  }
  await w.close();
  say(`final ${name}`);
} else if (mode === 'export') {
  const [file, name] = args as [string, string];
  await exportBundle(store, [name], file);
  say(`exported ${name}`);
} else if (mode === 'import') {
  const r = await importBundle(store, args[0]!);
  say(`imported ${r.imported.length} incomplete ${r.incomplete.length}`);
} else if (mode === 'read') {
  const name = args[0]!;
  const r = await store.newBlobReader(name, process.env.FOLLOW === '1' ? { follow: true } : {});
  const h = crypto.createHash('sha256');
  let n = 0;
  for await (const b of r.stream()) {
    h.update(b as Buffer);
    n += (b as Buffer).length;
  }
  await r.close();
  say(`read ${name} ${n} ${h.digest('hex')}`);
} else if (mode === 'name-loop') {
  const [name, ms, side] = args as [string, string, string];
  const until = Date.now() + Number(ms);
  let n = 0;
  while (Date.now() < until) {
    try {
      if (side === 'rm') await store.deleteBlob(name);
      else {
        const w = await store.newBlobWriter(name);
        await w.appendBytes(prngBytes(`name-loop ${n}`, 20_000));
        await w.close();
      }
      n++;
    } catch (e) {
      // The other side has it (being made or deleted), or it is not there to delete, or there already.
      if (!isCabError(e, 'ERR_NO_SUCH_BLOB') && !isCabError(e, 'ERR_BLOB_LOCKED') && !isCabError(e, 'ERR_BLOB_EXISTS')) throw e;
    }
  }
  say(`done ${n}`);
} else if (mode === 'rm') {
  await store.deleteBlob(args[0]!).then(
    () => say('deleted'),
    (e: unknown) => say(`rm failed ${code(e)}`),
  );
} else if (mode === 'rm-on-line') {
  say('ready');
  await new Promise((resolve) => process.stdin.once('data', resolve));
  await store.deleteBlob(args[0]!);
  say('deleted');
  process.stdin.destroy();
} else if (mode === 'half-created') {
  // blob/open.ts createDescriptor up to its link, paused where a writer is until its touchBlob.
  const name = args[0]!;
  const tmp = path.join(root!, 'tmp', `${process.pid}-half.desc`);
  const fh = await fs.open(tmp, 'wx+');
  if (!tryLockExclusive(fh.fd)) throw new Error('not locked');
  await fh.write(encodeHeader(name, Date.now()), 0);
  await fh.datasync();
  await fs.mkdir(path.join(root!, 'blob', name.slice(0, 2)), { recursive: true });
  await fs.link(tmp, path.join(root!, 'blob', name.slice(0, 2), name));
  await fs.unlink(tmp);
  say('linked');
  setInterval(() => {}, 1000);
} else {
  throw new Error(`no mode ${mode}`);
}
await store.close();
