#!/usr/bin/env node
// The bin (bundled to dist/bin/cabstore.js by scripts/bundle.mjs): runs the
// CLI's bundle, cli.cjs beside it, from a V8 code cache. Node 20 keeps no
// compile cache of its own, and the CLI's start is mostly compiling: V8 keeps
// the bytecode of what a command ran in a cache file per command, and the next
// run of that command deserializes it instead of parsing and compiling again
// (a CLI pull of a small update, 40 ms less CPU; docs/BENCHMARKS.md, ninth session).
//
// The cache: $CABSTORE_CODE_CACHE, else $XDG_CACHE_HOME/cabstore, else
// ~/.cache/cabstore; CABSTORE_CODE_CACHE=off keeps none. A file is named by the
// bundle's content hash, Node's version and the command; it is written once,
// atomically (a temporary file renamed), when missing or rejected (V8 rejects
// a cache made by another V8 or under other flags), and read only if it is
// ours (its owner is this process's user). Writing one also removes those of
// other bundles written over a day ago. Any failure to read or write a cache
// only means compiling as without it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import vm from 'node:vm';
import v8 from 'node:v8';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The bundle's content hash, put in by scripts/bundle.mjs (esbuild's define). */
declare const CABSTORE_CLI_HASH: string;

// The CLI's own flag (cli.ts says why), set before compiling: a cache made under other flags is rejected.
v8.setFlagsFromString('--no-incremental-marking-task');

const file = fileURLToPath(new URL('./cli.cjs', import.meta.url));
const source = fs.readFileSync(file, 'utf8');

/** The command being run, the first argument that is no option nor a global option's value; else 'none'. */
function command(args: string[]): string {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--store' || a === '--s3' || a === '--s3-endpoint') i++;
    else if (!a.startsWith('-')) return /^[a-z]{1,20}$/.test(a) ? a : 'other';
  }
  return 'none';
}

function cacheDir(): string | undefined {
  const env = process.env.CABSTORE_CODE_CACHE;
  if (env === 'off' || typeof CABSTORE_CLI_HASH !== 'string') return undefined;
  if (env) return env;
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'cabstore');
}

/** The cache file's bytes if it is there and ours. */
function readOurs(cacheFile: string): Buffer | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(cacheFile, 'r');
    return fs.fstatSync(fd).uid === process.geteuid?.() ? fs.readFileSync(fd) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

const DAY_MS = 24 * 3600 * 1000;
const dir = cacheDir();
const stem = `${typeof CABSTORE_CLI_HASH === 'string' ? CABSTORE_CLI_HASH : ''}-${process.version}-${process.arch}`;
const cacheFile = dir && path.join(dir, `${stem}-${command(process.argv.slice(2))}.v8cache`);
const cachedData = cacheFile ? readOurs(cacheFile) : undefined;
// CommonJS's wrapper, and the bundle's import.meta.url (scripts/bundle.mjs). The bundle's "use strict" comes first in it.
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname, __cabstoreUrl) {${source}\n})`, { filename: file, cachedData });

if (cacheFile && (!cachedData || script.cachedDataRejected)) {
  // At exit, the cache holds the bytecode of every function the command compiled, not only the top level.
  process.once('exit', () => {
    const tmp = `${cacheFile}.${process.pid}.tmp`;
    try {
      fs.mkdirSync(dir!, { recursive: true, mode: 0o700 });
      fs.writeFileSync(tmp, script.createCachedData(), { mode: 0o600 });
      fs.renameSync(tmp, cacheFile);
      // Those of other bundles or Node versions, written over a day ago, are likely of no more use.
      for (const f of fs.readdirSync(dir!)) {
        const other = path.join(dir!, f);
        if (f.endsWith('.v8cache') && !f.startsWith(stem) && fs.statSync(other).mtimeMs < Date.now() - DAY_MS) fs.rmSync(other, { force: true });
      }
    } catch {
      try {
        fs.rmSync(tmp, { force: true });
      } catch {
        // Left for the next write of this cache, which replaces it.
      }
    }
  });
}

const module = { exports: {} };
(script.runInThisContext() as (...a: unknown[]) => void).call(module.exports, module.exports, createRequire(file), module, file, path.dirname(file), pathToFileURL(file).href);
