// Preloaded into a CLI child (NODE_OPTIONS=--import) by tests that check
// what a command loads: appends every module file the process loads to the
// file $CABSTORE_TEST_LOADED names, one URL a line. ES modules are seen by
// a load hook (which runs on a thread of its own, so it appends as it
// goes); CommonJS ones, which `require` loads without the hook, are taken
// from require's cache when the process exits.
import fs from 'node:fs';
import { createRequire, register } from 'node:module';
import { pathToFileURL } from 'node:url';

const file = process.env.CABSTORE_TEST_LOADED;
if (file) {
  register('./loaded-modules-hook.js', import.meta.url);
  const cache = createRequire(import.meta.url).cache;
  process.on('exit', () => fs.appendFileSync(file, Object.keys(cache).map((p) => `${pathToFileURL(p).href}\n`).join('')));
}
