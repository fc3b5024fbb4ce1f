#!/usr/bin/env node
// The bin (bundled to dist/bin/cabstore.js by scripts/bundle.mjs): runs the
// CLI's bundle, cli.cjs beside it, from a V8 code cache. Node 20 keeps no
// compile cache of its own, and the CLI's start is mostly compiling: V8 keeps
// the bytecode of what a command ran in a cache file per command, and the next
// run of that command deserializes it instead of parsing and compiling again
// (a CLI pull of a small update, 40 ms less CPU; docs/BENCHMARKS.md, ninth session).
//
// The cache: $CABSTORE_CODE_CACHE, else $XDG_CACHE_HOME/cabstore (if absolute),
// else ~/.cache/cabstore (if the home directory is absolute), else none;
// CABSTORE_CODE_CACHE=off keeps none. A file is named by the bundle's content
// hash, Node's version and the command (a word that is no command: `other`);
// it is written once, atomically (a new temporary file, O_EXCL, renamed),
// when missing or rejected (V8 rejects a cache made by another V8 or under
// other flags), and read only if it is a regular file of ours (owned by this
// process's user, not a link, at most 32 MiB). Writing one also removes the
// caches of other bundles and the temporary files of killed writers, written
// over a day ago. Any failure to read or write a cache only means compiling
// as without it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import vm from 'node:vm';
import v8 from 'node:v8';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The bundle's content hash, put in by scripts/bundle.mjs (esbuild's define). */
declare const CABSTORE_CLI_HASH: string;

// The CLI's own flags (cli.ts says why), set before compiling: a cache made under other flags is rejected.
v8.setFlagsFromString('--no-incremental-marking-task');
v8.setFlagsFromString('--interrupt-budget=1048576');

const file = fileURLToPath(new URL('./cli.cjs', import.meta.url));
const source = fs.readFileSync(file, 'utf8');

/**
 * The commands, for the cache file's name (test/cli-start.test.ts checks the list against the CLI's own):
 * any other word shares one file, `other`, so mistyped commands do not add a file each.
 */
const COMMANDS = new Set(['init', 'put', 'resume', 'get', 'cat', 'ls', 'stat', 'rm', 'gc', 'fsck', 'serve', 'pull', 'push', 'have', 'export', 'import', 'signpost', 'help']);

/** The command being run, the first argument that is no option nor a global option's value; else 'none'. */
function command(args: string[]): string {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--store' || a === '--s3' || a === '--s3-endpoint') i++;
    else if (!a.startsWith('-')) return COMMANDS.has(a) ? a : 'other';
  }
  return 'none';
}

/**
 * The cache's folder: $CABSTORE_CODE_CACHE (a relative one from the current directory: the user named it),
 * else $XDG_CACHE_HOME/cabstore, else ~/.cache/cabstore; none when off, or when neither XDG_CACHE_HOME nor
 * the home directory is an absolute path (the XDG spec: a relative one is invalid; an empty HOME would put
 * a .cache folder in whatever directory the CLI runs in).
 */
function cacheDir(): string | undefined {
  const env = process.env.CABSTORE_CODE_CACHE;
  if (env === 'off' || typeof CABSTORE_CLI_HASH !== 'string') return undefined;
  if (env) return path.resolve(env);
  const xdg = process.env.XDG_CACHE_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'cabstore');
  let home: string;
  try {
    home = os.homedir();
  } catch {
    return undefined;
  }
  return path.isAbsolute(home) ? path.join(home, '.cache', 'cabstore') : undefined;
}

/** The most bytes a cache file may have (a command's is 0.2-0.8 MB): anything larger is not one of ours. */
const MAX_CACHE_BYTES = 32 * 2 ** 20;

/**
 * The cache file's bytes if it is a regular file of ours (owned by this process's user, not a link) and of a
 * cache's size. Opened without blocking (a FIFO put there would block a plain open for good) and without
 * following a link (a link to /dev/zero would never end).
 */
function readOurs(cacheFile: string): Buffer | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(cacheFile, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.uid !== process.geteuid?.() || st.size > MAX_CACHE_BYTES) return undefined;
    const bytes = Buffer.allocUnsafe(st.size);
    let got = 0;
    while (got < bytes.length) {
      const n = fs.readSync(fd, bytes, got, bytes.length - got, got);
      if (n === 0) break;
      got += n;
    }
    return got === bytes.length ? bytes : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Writes the cache file: into a new temporary file (O_EXCL: never through a file or link already at its
 * name, which another user may have put there), then renamed over the cache file (a rename replaces a link
 * at that name, never what it points to). Also removes, from the same folder, the caches of other bundles
 * and temporary files of killed writers, written over a day ago.
 */
function writeCache(dir: string, cacheFile: string, bytes: Buffer): void {
  const tmp = `${cacheFile}.${process.pid}.tmp`;
  let fd: number | undefined;
  let made = false;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
    made = true;
    let done = 0;
    while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, cacheFile);
  } catch {
    // Our own temporary file only (O_EXCL made it ours): not one that was there before.
    if (fd !== undefined) fs.closeSync(fd);
    if (made) fs.rmSync(tmp, { force: true });
    return;
  }
  for (const f of fs.readdirSync(dir)) {
    const ours = f.startsWith(stem) && f.endsWith('.v8cache');
    if (ours || !/\.v8cache(\.\d+\.tmp)?$/.test(f)) continue;
    const other = path.join(dir, f);
    try {
      if (fs.lstatSync(other).mtimeMs < Date.now() - DAY_MS) fs.rmSync(other, { force: true });
    } catch {
      // Gone already (another run's clean-up), or not ours to remove: left.
    }
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
    try {
      writeCache(dir!, cacheFile, script.createCachedData());
    } catch {
      // A cache is only ever a saving: the command's own outcome stands.
    }
  });
}

const module = { exports: {} };
(script.runInThisContext() as (...a: unknown[]) => void).call(module.exports, module.exports, createRequire(file), module, file, path.dirname(file), pathToFileURL(file).href);
