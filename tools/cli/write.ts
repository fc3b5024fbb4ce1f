// Commands that make blobs: init, put (which says how to finish a blob it
// was stopped writing), resume.
import path from 'node:path';
import type { Command } from 'commander';
import { CabError, isCabError } from '../../src/errors.js';
import type { BlobStore } from '../../src/store.js';
import { Progress } from '../progress.js';
import { usage } from '../args.js';
import { Interrupted, cabstoreCommand, hex, lib, out, startHashing, storeDir, withStore } from './context.js';

export function writeCommands(program: Command): void {
  program
    .command('init')
    .description('make a store in DIR, new or empty (default: the store); prints its path')
    .argument('[dir]')
    .action(async (dir: string | undefined) => {
      const root = dir ?? storeDir();
      const { BlobStore } = await lib.store();
      // Open without creating first, to say whether this made the store.
      let created = false;
      const s = await BlobStore.open(root, { create: false }).catch(async (e: unknown) => {
        if (!isCabError(e, 'ERR_BAD_STORE') || e.data.reason !== 'absent') throw e;
        created = true;
        return BlobStore.open(root);
      });
      await s.close();
      out(s.root, { store: s.root, created });
    });

  program
    .command('put')
    .description('store files as finalized blobs; prints "NAME HASH" per file; - is stdin (pipes and FIFOs are read to their end)')
    .argument('<file...>')
    .option('--name <name>', 'the blob name (one file only)')
    .action(async (files: string[], o: { name?: string }) => {
      if (o.name && files.length !== 1) usage('--name takes exactly one file');
      await startHashing();
      const { STDIN } = await lib.source();
      if (files.filter((f) => f === STDIN).length > 1) usage('- (stdin) can be read only once');
      await untilSignal((signal) =>
        withStore(true, async (s) => {
          for (const f of files) {
            const r = await putFile(s, f, o.name, signal);
            out(`${r.name} ${hex(r.hash)}`, { name: r.name, hash: r.hash, size: r.size, file: f });
          }
        }),
      );
    });

  program
    .command('resume')
    .description("continue an unfinalized blob from FILE at the blob's durable size, then finalize it")
    .argument('<name>')
    .argument('<file>')
    .option('--expect-hash <hex>', 'finalize only if the blob hashes to this (else ERR_HASH_MISMATCH; it stays unfinalized)')
    .action(async (name: string, file: string, o: { expectHash?: string }) => {
      if (o.expectHash !== undefined && !/^[0-9a-fA-F]{64}$/.test(o.expectHash)) usage('--expect-hash takes a hash of 64 hex digits');
      await startHashing();
      await withStore(false, async (s) => {
        const w = await s.resumeBlobWriter(name);
        try {
          const { openSource, appendSource } = await lib.source();
          const src = await openSource(file);
          if (src.size === undefined) throw new CabError('ERR_NO_SUCH_FILE', `${file} is not a regular file: resume reads the same bytes again from a file`, { path: file });
          if (w.size > src.size) throw new CabError('ERR_ILLEGAL_POSITION', `the blob already holds ${w.size} bytes, the file only ${src.size}`, { blob: name });
          // Only FILE's own beginning is continued: nothing is appended to a blob that holds other bytes.
          const { firstDifference } = await lib.compare();
          const diff = await firstDifference(s, name, file);
          if (diff !== undefined) {
            throw new CabError('ERR_HASH_MISMATCH', `blob ${name} is not the beginning of ${file}: they differ at byte ${diff}`, { blob: name, path: file, offset: diff });
          }
          const p = new Progress(`resume ${name.slice(0, 8)}`, src.size);
          await appendSource(w, src, (n) => p.set(n), { from: w.size });
          await w.close(o.expectHash === undefined ? {} : { expectHash: o.expectHash.toLowerCase() });
          p.end();
          out(`${name} ${hex(w.hash)}`, { name, hash: w.hash });
        } finally {
          await w.closeWithoutFinalize();
        }
      });
    });
}

/**
 * Runs `fn` with a signal that SIGINT or SIGTERM fires; a second signal
 * ends the process at once. An Interrupted error is then what ended it.
 */
async function untilSignal<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  // The store's code first: proper-lockfile, in it, loads signal-exit, whose handler kills the process on a
  // signal when it is the only listener left. Added before ours, it runs first and sees ours, so the first
  // signal is ours; added after, it would run once ours (once) had gone, and kill the process before the cleanup.
  await lib.store();
  const ac = new AbortController();
  const stop = (sig: NodeJS.Signals) => ac.abort(sig);
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    return await fn(ac.signal);
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}

/**
 * One file into a new blob. Says the blob's name on stderr as it starts,
 * with the command that finishes it, for a put that is stopped. Stopped by
 * `signal`, it makes what was appended durable, unfinalized, and throws
 * Interrupted saying how to continue.
 */
async function putFile(s: BlobStore, file: string, name: string | undefined, signal: AbortSignal): Promise<{ name: string; hash: Uint8Array; size: number }> {
  const { STDIN, openSource, appendSource } = await lib.source();
  const src = await openSource(file);
  if (signal.aborted) throw new Interrupted(signal.reason as NodeJS.Signals, `interrupted before ${file} was started`);
  const w = await s.newBlobWriter(name);
  // A stream (stdin, a pipe, a FIFO) cannot be read again: resume needs its bytes in a file.
  const label = file === STDIN ? 'stdin' : file;
  const again = cabstoreCommand('resume', w.name, src.size === undefined ? 'FILE' : file);
  const sameBytes = src.size === undefined ? `, FILE holding the same bytes as ${label}` : '';
  process.stderr.write(`cabstore: writing blob ${w.name} (if interrupted: ${again}${sameBytes})\n`);
  const p = new Progress(`put ${file === STDIN ? 'stdin' : path.basename(file)}`, src.size);
  try {
    const size = await appendSource(w, src, (n) => p.set(n), { signal }).catch((e: unknown) => {
      if (!signal.aborted) throw e;
      return 0; // the stream was cut by the signal
    });
    if (!signal.aborted) {
      await w.close();
      p.end();
      return { name: w.name, hash: w.hash, size };
    }
    const held = w.size;
    await w.closeWithoutFinalize();
    p.end();
    throw new Interrupted(
      signal.reason as NodeJS.Signals,
      `interrupted: blob ${w.name} holds the first ${held} bytes of ${label}, durably, unfinalized; to finish it: ${again}${sameBytes}`,
    );
  } finally {
    await w.closeWithoutFinalize();
  }
}

