// Regenerates test/vectors/fastcdc.json. Run only when the chunker format
// changes on purpose (which is a new store format): node dist/tools/gen-vectors.js
import fs from 'node:fs';
import { chunk, GEAR } from '../src/index.js';
import { prngBytes } from './data.js';
import { sha256, toHex } from '../src/hash/index.js';

const cases = [
  { seed: 'cabstore fastcdc vector 1', size: 4 * 1024 * 1024, params: { min: 16384, avg: 65536, max: 262144 } },
  { seed: 'cabstore fastcdc vector 2', size: 256 * 1024, params: { min: 256, avg: 1024, max: 4096 } },
  { seed: 'cabstore fastcdc vector 3', size: 1024 * 1024, params: { min: 4096, avg: 16384, max: 65536 } },
];
const gearBytes = Buffer.alloc(1024);
GEAR.forEach((g, i) => gearBytes.writeInt32BE(g, 4 * i));
const out = {
  input: 'prngBytes(seed, size) of tools/data.ts: AES-128-CTR over zero bytes, key || iv = SHA-256(seed)',
  gearSha256: toHex(sha256(gearBytes)),
  cases: cases.map((c) => ({ ...c, sizes: chunk(prngBytes(c.seed, c.size), c.params) })),
};
fs.writeFileSync(new URL('../../test/vectors/fastcdc.json', import.meta.url), JSON.stringify(out, null, 1) + '\n');
console.log('wrote test/vectors/fastcdc.json');
