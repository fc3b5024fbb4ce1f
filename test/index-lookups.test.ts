// The chunk index's point looks that a pull's planning and its writer use
// in place of walks (src/index/chunk-index.ts): sizeAt, one get of a
// chunk's exact place, and chunkNumberAt's gallop from a hint (the chunk
// after the last range taken from that source). Same answers as a search
// without them, from any hint.
import test from 'ava';
import { prngBytes } from '../tools/data.js';
import { tempStore, putBlob, chunkStarts } from './helpers/store.js';

const MiB = 1024 * 1024;

test('chunkNumberAt finds a chunk by its offset from any hint (before it, at it, after it, past the end), and nothing between chunk starts; sizeAt only at a chunk start', async (t) => {
  const s = await tempStore(t);
  const name = await putBlob(s, prngBytes('chunk numbers', 3 * MiB + 17));
  const starts = await chunkStarts(s, name);
  const hashes: Uint8Array[] = [];
  for await (const c of s.blobChunkStream(name)) hashes.push(c.hash);
  const n = starts.length;
  t.true(n > 20);
  for (let i = 0; i < n; i++) {
    for (const near of [undefined, 0, Math.max(0, i - 1), Math.max(0, i - 3), i, i + 1, i + 7, n - 1, n, n + 5]) {
      t.is(s.index.chunkNumberAt(name, starts[i]!, near), i, `chunk ${i} from ${near}`);
    }
    t.is(s.index.chunkNumberAt(name, starts[i]! + 1, Math.max(0, i - 1)), undefined);
    t.is(s.index.sizeAt(hashes[i]!, name, starts[i]!), (starts[i + 1] ?? 3 * MiB + 17) - starts[i]!);
    t.is(s.index.sizeAt(hashes[i]!, name, starts[i]! + 1), undefined);
  }
});
