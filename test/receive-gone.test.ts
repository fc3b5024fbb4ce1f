// A pull whose local source blob is deleted (and collected) after the recipe
// chose a range of it, before that range is written: the pull plans the rest
// again (resumed from what it wrote) and ends exact, instead of failing with
// ERR_NO_SUCH_BLOB. Real sockets, a proxy holding the sender's answers.
import test from 'ava';
import { decodeMessage } from '../src/index.js';
import { prngBytes } from '../tools/data.js';
import { assertBlobGood, putBlob, tempStore } from './helpers/store.js';
import { wsProxy } from './helpers/proxies.js';
import { connectPeer, servePeer } from './helpers/peers.js';
import { KiB, MiB } from './helpers/transfer.js';

const isBinaryMessage = (frame: Buffer, t: string) => {
  try {
    return decodeMessage(frame).t === t;
  } catch {
    return false;
  }
};

for (const how of ['pull', 'push'] as const) {
  test(`${how}: the local blob a range was planned from is deleted and collected before the range is written: the rest is planned again, the blob is exact, fsck clean`, async (t) => {
    const old = Buffer.from(prngBytes(`gone ${how}`, 3 * MiB));
    // An edit in the first chunk: a run matched finely (its answers held below), then a long range of `old`, written after it.
    const bytes = Buffer.concat([old.subarray(0, 10 * KiB), Buffer.from('an edit near the start'), old.subarray(10 * KiB)]);
    const src = await tempStore(t);
    const name = await putBlob(src, bytes);
    const dst = await tempStore(t);
    const base = await putBlob(dst, old);
    // The receiving end's store is `dst`: a pull from a server on src, or a push from src into a server on dst.
    const server = await servePeer(t, how === 'pull' ? src : dst);
    let holding = false;
    const held: Array<{ frame: Buffer; send: () => void }> = [];
    const proxy = await wsProxy(server.url, {
      // The receiver's `fine` requests go to the sender: toServer for a pull, toClient for a push (the server receives).
      [how === 'pull' ? 'toServer' : 'toClient']: (frame: Buffer, isBinary: boolean) => {
        if (isBinary && isBinaryMessage(frame, 'fine')) holding = true;
        return frame;
      },
      [how === 'pull' ? 'toClient' : 'toServer']: (frame: Buffer, isBinary: boolean, link: { up: { send(d: Buffer, o: object): void }; down: { send(d: Buffer, o: object): void } }) => {
        if (!holding) return frame;
        const to = how === 'pull' ? link.down : link.up;
        held.push({ frame, send: () => to.send(frame, { binary: isBinary }) });
        return null;
      },
    });
    t.teardown(() => proxy.close());
    const client = await connectPeer(t, how === 'pull' ? dst : src, proxy.url);
    const moving = how === 'pull' ? client.pull(name) : client.push(name);
    moving.catch(() => {});
    for (let i = 0; i < 500 && held.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.true(held.length > 0, 'the fine answers are held');
    await dst.deleteBlob(base);
    const gc = await dst.gc();
    t.log(`gc while held: ${JSON.stringify(gc)}`);
    holding = false;
    for (const h of held.splice(0)) h.send();
    await moving;
    await assertBlobGood(t, dst, name, bytes);
  });
}
