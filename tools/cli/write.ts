// Commands that make blobs: init, put and resume (each says how to finish a
// blob it was stopped writing).
import path from 'node:path';
import type { Command } from 'commander';
import { CabError, isCabError } from '../../src/errors.js';
import type { BlobStore } from '../../src/store.js';
import type { BlobWriter } from '../../src/blob/writer.js';
import { checkBlobName } from '../../src/format/layout.js';
import { Progress } from '../progress.js';
import { STDIN, appendSource, openSource, type Source } from '../source.js';
import { usage } from '../args.js';
import { Interrupted, cabstoreCommand, hex as toHex, lib, out, startHashing, storeDir, storeOptions, untilSignal, withStore } from './context.js';

export function writeCommands(program: Command): void {
  program
    .command('init')
    .description('make a store in DIR, new or empty (default: the store); prints its path')
    .argument('[dir]')
    .action(async (dir: string | undefined) => {
      const root = dir ?? storeDir();
      // Open without creating first, to say whether this made the store.
      let created = false;
      const { BlobStore } = await lib.store();
      const bucket = await storeOptions();
      const s = await BlobStore.open(root, { ...bucket, create: false }).catch(async (e: unknown) => {
        if (!isCabError(e, 'ERR_BAD_STORE') || e.data.reason !== 'absent') throw e;
        created = true;
        return BlobStore.open(root, bucket);
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
      if (files.filter((f) => f === STDIN).length > 1) usage('- (stdin) can be read only once');
      // Everything that can be checked without the store is, before it is opened (or made, at a path perhaps mistyped).
      if (o.name !== undefined) checkBlobName(o.name);
      await startHashing();
      const sources: Source[] = [];
      for (const f of files) sources.push(await openSource(f));
      await untilSignal((signal) =>
        withStore(true, async (s) => {
          for (const src of sources) {
            const r = await putFile(s, src, o.name, signal);
            out(`${r.name} ${toHex(r.hash)}`, { name: r.name, hash: r.hash, size: r.size, file: src.file });
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
      const { firstDifference } = await lib.compare();
      const src = await openSource(file);
      if (src.size === undefined) throw new CabError('ERR_NO_SUCH_FILE', `${file} is not a regular file: resume reads the same bytes again from a file`, { path: file });
      await untilSignal((signal) =>
        withStore(false, async (s) => {
          const w = await s.resumeBlobWriter(name);
          try {
            if (w.size > src.size) throw new CabError('ERR_ILLEGAL_POSITION', `the blob already holds ${w.size} bytes, the file only ${src.size}`, { blob: name });
            // Only FILE's own beginning is continued: nothing is appended to a blob that holds other bytes.
            const diff = await firstDifference(s, name, file);
            if (diff !== undefined) {
              throw new CabError('ERR_HASH_MISMATCH', `blob ${name} is not the beginning of ${file}: they differ at byte ${diff}`, { blob: name, path: file, offset: diff });
            }
            const again = cabstoreCommand('resume', name, file, ...(o.expectHash === undefined ? [] : ['--expect-hash', o.expectHash]));
            const r = await appendAndFinalize(w, src, { signal, from: w.size, again, expectHash: o.expectHash?.toLowerCase() });
            out(`${name} ${toHex(r.hash)}`, { name, hash: r.hash });
          } finally {
            await w.closeWithoutFinalize();
          }
        }),
      );
    });
}

/**
 * One file into a new blob. Says the blob's name on stderr as it starts,
 * with the command that finishes it, for a put that is stopped.
 */
async function putFile(s: BlobStore, src: Source, name: string | undefined, signal: AbortSignal): Promise<{ name: string; hash: Uint8Array; size: number }> {
  if (signal.aborted) throw new Interrupted(signal.reason as NodeJS.Signals, `interrupted before ${src.file} was started`);
  const w = await s.newBlobWriter(name);
  try {
    // A stream (stdin, a pipe, a FIFO) cannot be read again: resume needs its bytes in a file.
    const again =
      src.size === undefined
        ? `${cabstoreCommand('resume', w.name, 'FILE')}, FILE holding the same bytes as ${src.file === STDIN ? 'stdin' : src.file}`
        : cabstoreCommand('resume', w.name, src.file);
    process.stderr.write(`cabstore: writing blob ${w.name} (if interrupted: ${again})\n`);
    return { name: w.name, ...(await appendAndFinalize(w, src, { signal, again })) };
  } finally {
    await w.closeWithoutFinalize();
  }
}

interface FinishOptions {
  signal: AbortSignal;
  /** How to continue the blob (the command, and what FILE must hold), to print if stopped. */
  again: string;
  /** Where in the file to start (a resume). */
  from?: number;
  /** Finalize only with this hash (lowercase hex). */
  expectHash?: string;
}

/**
 * Appends `src` to `w` and finalizes it, for put and resume alike. Stopped
 * by `signal`, it makes what was appended durable, unfinalized, and throws
 * Interrupted saying how much the blob holds and how to continue.
 */
async function appendAndFinalize(w: BlobWriter, src: Source, o: FinishOptions): Promise<{ hash: Uint8Array; size: number }> {
  const { signal } = o;
  const label = src.file === STDIN ? 'stdin' : src.file;
  const p = new Progress(`${o.from === undefined ? 'put' : 'resume'} ${src.file === STDIN ? 'stdin' : path.basename(src.file)}`, src.size);
  const size = await appendSource(w, src, (n) => p.set(n), { signal, from: o.from }).catch((e: unknown) => {
    if (!signal.aborted) throw e;
    return 0; // the stream was cut by the signal
  });
  if (!signal.aborted) {
    await w.close(o.expectHash === undefined ? {} : { expectHash: o.expectHash });
    p.end();
    return { hash: w.hash, size };
  }
  const held = w.size;
  await w.closeWithoutFinalize();
  p.end();
  throw new Interrupted(signal.reason as NodeJS.Signals, `interrupted: blob ${w.name} holds the first ${held} bytes of ${label}, durably, unfinalized; to finish it: ${o.again}`);
}
