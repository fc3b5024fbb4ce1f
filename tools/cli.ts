#!/usr/bin/env node
// The cabstore command line. Exit codes: 0 success, 1 failure (one line naming
// the CabError code), 2 bad usage (with help).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Command, CommanderError, Option } from 'commander';
import {
  BlobStore,
  CabError,
  connect,
  exportBundle,
  firstDifference,
  importBundle,
  isCabError,
  serve,
  toHex,
  writeHave,
  type Perm,
} from '../src/index.js';
import { replaceDurable, writeAll } from '../src/disk/durable.js';
import { ioError } from '../src/errors.js';
import { Progress, fmtBytes } from './progress.js';
import { STDIN, appendSource, openSource } from './source.js';
import { parseTokens, portArg, sizeArg, usage } from './args.js';

/** The package's own version, from the package.json two levels above dist/tools/. */
const VERSION = (JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

// A reader that goes away (`cabstore cat X | head`) is the end of the output, as for cat: exit 0, quietly.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

const program = new Command();
program
  .name('cabstore')
  .version(VERSION, '-V, --version', 'print the version')
  .description('A content-addressed blob store with rsync-like transfer.\nThe store is --store DIR, else $CABSTORE_DIR, else ./.cabstore.')
  .option('--store <dir>', 'the store directory')
  .option('--json', 'print results as JSON')
  .exitOverride()
  .configureHelp({ showGlobalOptions: true }) // every command's help shows --store and --json
  .configureOutput({ outputError: () => {} })
  .showHelpAfterError();

const storeDir = () => program.opts<{ store?: string }>().store ?? process.env.CABSTORE_DIR ?? './.cabstore';
const json = () => program.opts<{ json?: boolean }>().json === true;
const out = (text: string, obj: unknown) => console.log(json() ? JSON.stringify(obj, replacer) : text);

/** Hashes and other bytes as hex. A Buffer reaches a replacer already turned into {type, data} by its toJSON, so look at the holder. */
function replacer(this: Record<string, unknown>, k: string, v: unknown): unknown {
  const raw = this[k];
  return raw instanceof Uint8Array ? toHex(raw) : v;
}

async function withStore<T>(fn: (s: BlobStore) => Promise<T>, options?: { catchUpIndex?: boolean }): Promise<T> {
  const s = await BlobStore.open(storeDir(), options);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

/** A small file the user names (a token file): ERR_NO_SUCH_FILE if it cannot be read. */
function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new CabError('ERR_NO_SUCH_FILE', `cannot read ${file}: ${(e as Error).message}`, { path: file }, { cause: e });
  }
}

function token(opts: { tokenFile?: string }): string | undefined {
  if (opts.tokenFile) return readText(opts.tokenFile).split('\n')[0]!.trim();
  return process.env.CABSTORE_TOKEN;
}

async function putFile(s: BlobStore, file: string, name?: string): Promise<{ name: string; hash: Uint8Array; size: number }> {
  const src = await openSource(file);
  const w = await s.newBlobWriter(name);
  const p = new Progress(`put ${file === STDIN ? 'stdin' : path.basename(file)}`, src.size);
  const size = await appendSource(w, src, (n) => p.set(n));
  await w.close();
  p.end();
  return { name: w.name, hash: w.hash, size };
}

program
  .command('put')
  .description('store files as finalized blobs; prints "NAME HASH" per file; - is stdin (pipes and FIFOs are read to their end)')
  .argument('<file...>')
  .option('--name <name>', 'the blob name (one file only)')
  .action(async (files: string[], o: { name?: string }) => {
    if (o.name && files.length !== 1) usage('--name takes exactly one file');
    if (files.filter((f) => f === STDIN).length > 1) usage('- (stdin) can be read only once');
    await withStore(async (s) => {
      for (const f of files) {
        const r = await putFile(s, f, o.name);
        out(`${r.name} ${toHex(r.hash)}`, { name: r.name, hash: r.hash, size: r.size, file: f });
      }
    });
  });

async function writeBlob(name: string, output?: string): Promise<void> {
  await withStore(async (s) => {
    const r = await s.newBlobReader(name);
    try {
      const p = new Progress(`get ${name.slice(0, 8)}`, r.size, output !== undefined && process.stderr.isTTY === true);
      const src = r.stream();
      src.on('data', (b: Buffer) => p.add(b.length));
      if (output) {
        // A failed get leaves neither the file nor its temp file.
        const fill = async (fh: fsp.FileHandle) => {
          let at = 0;
          for await (const b of src as AsyncIterable<Uint8Array>) {
            await writeAll(fh, b, at);
            at += b.length;
          }
        };
        await replaceDurable(output, fill).catch((e: unknown) => {
          throw typeof (e as NodeJS.ErrnoException).errno === 'number' ? ioError(e, `writing ${output}`, { path: output }) : e;
        });
      } else {
        try {
          await pipeline(src, process.stdout);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EPIPE') throw e;
          return; // the reader went away: the end of the output, not a failure
        }
      }
      p.end();
    } finally {
      await r.close();
    }
  });
}

program
  .command('get')
  .description('write a blob to a file (-o) or to stdout')
  .argument('<name>')
  .option('-o, --output <file>', 'write here instead of stdout')
  .action(async (name: string, o: { output?: string }) => writeBlob(name, o.output));

program
  .command('cat')
  .description('write a blob to stdout')
  .argument('<name>')
  .action(async (name: string) => writeBlob(name));

program
  .command('ls')
  .description('list blobs: name, size, finalized, hash')
  .action(async () => {
    await withStore(async (s) => {
      const rows = [];
      for await (const name of s.listBlobIds()) {
        const r = await s.newBlobReader(name).catch(() => undefined);
        if (!r) continue;
        await r.close();
        rows.push({ name, size: r.size, finalized: r.isFinalized, hash: r.hash ? toHex(r.hash) : null });
      }
      rows.sort((a, b) => (a.name < b.name ? -1 : 1));
      if (json()) console.log(JSON.stringify(rows));
      else for (const r of rows) console.log(`${r.name} ${String(r.size).padStart(14)} ${r.finalized ? 'final ' : 'open  '} ${r.hash ?? '-'}`);
    });
  });

program
  .command('stat')
  .description('facts about a blob, here (NAME) or on a server (URL NAME)')
  .argument('<name-or-url>')
  .argument('[name]')
  .option('--token-file <file>', 'the token (first line) for a server')
  .action(async (a: string, b: string | undefined, o: { tokenFile?: string }) => {
    if (b !== undefined) {
      await withStore(async (s) => {
        const c = await connect(s, a, { token: token(o) });
        try {
          const st = await c.stat(b);
          out(`size ${st.size}\nfinalized ${st.finalized}\nhash ${st.hash ? toHex(st.hash) : '-'}`, { name: b, ...st });
        } finally {
          await c.close();
        }
      });
      return;
    }
    await withStore(async (s) => {
      const r = await s.newBlobReader(a);
      await r.close();
      let chunks = 0;
      let shared = 0;
      for await (const c of s.blobChunkStream(a)) {
        chunks++;
        for (const loc of s.index.locations(c.hash)) {
          if (loc.blob !== a) {
            shared += c.size;
            break;
          }
        }
      }
      const info = { name: a, size: r.size, finalized: r.isFinalized, hash: r.hash ? toHex(r.hash) : null, chunks, sharedBytes: shared, damagedAt: r.damagedAt ?? null };
      out(
        `name ${a}\nsize ${r.size}\nfinalized ${r.isFinalized}\nhash ${info.hash ?? '-'}\nchunks ${chunks}\nshared ${shared} bytes with other blobs` +
          (r.damagedAt !== undefined ? `\ndamaged from byte ${r.damagedAt}` : ''),
        info,
      );
    });
  });

program
  .command('rm')
  .description('delete blobs (their fragments go at the next gc)')
  .argument('<name...>')
  .action(async (names: string[]) => {
    await withStore(async (s) => {
      for (const n of names) await s.deleteBlob(n);
    });
  });

program
  .command('resume')
  .description("continue an unfinalized blob from FILE at the blob's durable size, then finalize it")
  .argument('<name>')
  .argument('<file>')
  .action(async (name: string, file: string) => {
    await withStore(async (s) => {
      const w = await s.resumeBlobWriter(name);
      try {
        const size = (await fsp.stat(file)).size;
        if (w.size > size) throw new CabError('ERR_ILLEGAL_POSITION', `the blob already holds ${w.size} bytes, the file only ${size}`, { blob: name });
        // Only FILE's own beginning is continued: nothing is appended to a blob that holds other bytes.
        const diff = await firstDifference(s, name, file);
        if (diff !== undefined) {
          throw new CabError('ERR_HASH_MISMATCH', `blob ${name} is not the beginning of ${file}: they differ at byte ${diff}`, { blob: name, path: file, offset: diff });
        }
        const p = new Progress(`resume ${name.slice(0, 8)}`, size);
        p.set(w.size);
        const step = 64 * 1024 * 1024;
        for (let off = w.size; off < size; off += step) {
          await w.appendBytes({ file, offset: off, size: Math.min(step, size - off) });
          p.set(Math.min(size, off + step));
        }
        await w.close();
        p.end();
        out(`${name} ${toHex(w.hash)}`, { name, hash: w.hash });
      } finally {
        await w.closeWithoutFinalize();
      }
    });
  });

program
  .command('gc')
  .description('delete fragments no blob uses (safe while other processes use the store)')
  .option('--dry-run', 'report, delete nothing')
  .option('--max-bytes <size>', 'also evict least recently accessed blobs until the store fits (64KiB, 1GiB, ...)', sizeArg)
  .option('--wait', 'wait for a GC already running instead of failing')
  .action(async (o: { dryRun?: boolean; maxBytes?: number; wait?: boolean }) => {
    await withStore(async (s) => {
      const tty = process.stderr.isTTY === true;
      const r = await s.gc({
        dryRun: o.dryRun,
        wait: o.wait,
        ...(o.maxBytes !== undefined ? { maxBytes: o.maxBytes } : {}),
        onProgress: (p) => tty && process.stderr.write(`\rgc ${p.phase} ${p.done}\x1b[K`),
      });
      if (tty) process.stderr.write('\r\x1b[K');
      out(
        `${r.dryRun ? 'would delete' : 'deleted'} ${r.fragmentsDeleted} fragments (${fmtBytes(r.bytesDeleted)}), kept ${r.fragmentsKept} (${fmtBytes(r.bytesKept)}), ` +
          `${r.tempFilesDeleted} temp files, ${r.indexEntriesRemoved} index entries, evicted ${r.evicted.length} blobs, in ${r.seconds.toFixed(2)} s`,
        r,
      );
    });
  });

program
  .command('fsck')
  .description('check the store; exits 1 if it finds a problem it did not repair, or a damaged blob')
  .option('--verify', 'also hash every fragment and finalized blob')
  .option('--repair', 'fix what can be fixed without losing anything')
  .action(async (o: { verify?: boolean; repair?: boolean }) => {
    const r = await withStore(
      async (s) => {
        const p = new Progress('fsck --verify', undefined, o.verify === true && process.stderr.isTTY === true);
        const rep = await s.fsck({ verify: o.verify, repair: o.repair, onProgress: (x) => p.set(x.bytesVerified) });
        p.end();
        return rep;
      },
      { catchUpIndex: false },
    );
    if (json()) console.log(JSON.stringify(r));
    else {
      for (const p of r.problems) console.log(`${p.repaired ? 'repaired' : 'PROBLEM '} ${p.kind}${p.blob ? ` blob ${p.blob}` : ''}${p.fragment ? ` fragment ${p.fragment}` : ''}: ${p.detail}`);
      for (const d of r.damaged) console.log(`damaged  blob ${d.blob} bytes ${d.offset}..${d.end}: ${d.why}`);
      for (const f of r.corruptFragments) console.log(`note     fragment ${f} does not hash to its name (a problem only where a blob above reads it)`);
      // Plain fsck reads no data: say what it checked, and what --verify hashed (fragments, then blob contents).
      const checked = o.verify
        ? `${r.blobs} blobs and ${r.fragments} fragments verified (${fmtBytes(r.bytesVerified)} hashed: every fragment, then every finalized blob's content)`
        : `${r.blobs} blobs checked (structure, fragment sizes, index; --verify also hashes the data)`;
      console.log(`${checked}, ${r.problems.length} problems, ${r.repaired} repaired, ${r.unrepaired} not repaired, ${r.seconds.toFixed(2)} s`);
    }
    // A damaged blob is a problem until a pull or an import heals it, repaired (recorded) or not.
    if (r.unrepaired > 0 || r.damaged.length > 0) process.exitCode = 1;
  });

program
  .command('serve')
  .description('serve the store over WebSocket until interrupted')
  .option('--host <host>', 'address to bind', '127.0.0.1')
  .option('--port <port>', 'port (0: any free one)', portArg, 0)
  .option('--token-file <file>', 'tokens: "TOKEN read,write" per line')
  .option('--insecure', 'no authentication: anyone may read and write')
  .option('--tls-cert <file>', 'PEM certificate (serve wss://)')
  .option('--tls-key <file>', 'PEM key')
  .action(async (o: { host: string; port: number; tokenFile?: string; insecure?: boolean; tlsCert?: string; tlsKey?: string }) => {
    if (!o.tokenFile && !o.insecure) usage('serve needs --token-file, or --insecure');
    if (!!o.tlsCert !== !!o.tlsKey) usage('--tls-cert and --tls-key go together');
    const tokens = o.tokenFile ? parseTokens(readText(o.tokenFile), o.tokenFile) : undefined;
    const tls = o.tlsCert ? { cert: readText(o.tlsCert), key: readText(o.tlsKey!) } : undefined;
    await withStore(async (s) => {
      const srv = await serve(s, { host: o.host, port: o.port, insecure: o.insecure, ...(tokens ? { tokens } : {}), ...(tls ? { tls } : {}) });
      out(`serving ${srv.url}`, { url: srv.url, port: srv.port });
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await srv.close();
    });
  });

const transferOpts = (c: Command) => c.option('--token-file <file>', 'the token (first line); else $CABSTORE_TOKEN').option('--ca <file>', 'PEM CA for wss://');

transferOpts(program.command('pull').description('fetch a blob from a server; only what this store lacks travels').argument('<url>').argument('<name>')).action(
  async (url: string, name: string, o: { tokenFile?: string; ca?: string }) => {
    await withStore(async (s) => {
      const c = await connect(s, url, { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}) });
      try {
        let p: Progress | undefined;
        const st = await c.pull(name, {
          onProgress: (x) => {
            p ??= new Progress(`pull ${name.slice(0, 8)}`, x.size);
            p.set(x.verifiedBytes);
          },
        });
        p?.end();
        out(
          `${name} ${toHex(st.hash)}: ${st.alreadyHad ? 'already here' : `${fmtBytes(st.receivedBytes)} received, ${fmtBytes(st.reusedBytes)} reused`}, ${fmtBytes(c.wire.sent + c.wire.received)} on the wire`,
          { ...st, wire: c.wire },
        );
      } finally {
        await c.close();
      }
    });
  },
);

transferOpts(program.command('push').description('send a blob to a server; only what it lacks travels').argument('<url>').argument('<name>')).action(
  async (url: string, name: string, o: { tokenFile?: string; ca?: string }) => {
    await withStore(async (s) => {
      const c = await connect(s, url, { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}) });
      try {
        const r = await c.push(name);
        out(`${name}: ${fmtBytes(r.received)} sent, ${fmtBytes(r.reused)} reused by the server, ${fmtBytes(c.wire.sent + c.wire.received)} on the wire`, { ...r, wire: c.wire });
      } finally {
        await c.close();
      }
    });
  },
);

program
  .command('have')
  .description('write a summary of the chunks this store holds (for export --have)')
  .option('-o, --output <file>', 'output file', 'cabstore.have')
  .action(async (o: { output: string }) => {
    await withStore(async (s) => {
      const r = await writeHave(s, o.output);
      out(`${o.output}: ${r.chunks} chunks in ${fmtBytes(r.bytes)}`, { file: o.output, ...r });
    });
  });

program
  .command('export')
  .description('write a bundle of blobs with only the chunks the --have file lacks')
  .argument('<name...>')
  .requiredOption('-o, --output <bundle>', 'the bundle file')
  .option('--have <file>', "the receiver's have file")
  .action(async (names: string[], o: { output: string; have?: string }) => {
    await withStore(async (s) => {
      const p = new Progress('export');
      const r = await exportBundle(s, names, o.output, { have: o.have, onProgress: (b) => p.set(b) });
      p.end();
      out(`${o.output}: ${r.blobs} blobs, ${r.chunks} chunks (${fmtBytes(r.dataBytes)} of data), ${fmtBytes(r.bytes)}`, { file: o.output, ...r });
    });
  });

program
  .command('import')
  .description('rebuild blobs from a bundle and local data; every chunk and blob verified')
  .argument('<bundle>')
  .action(async (file: string) => {
    await withStore(async (s) => {
      const p = new Progress('import');
      const r = await importBundle(s, file, { onProgress: (b) => p.set(b) });
      p.end();
      if (json()) console.log(JSON.stringify(r, replacer));
      else {
        for (const b of r.imported) console.log(`${b.name} ${toHex(b.hash)}: ${b.alreadyHad ? 'already here' : `${fmtBytes(b.receivedBytes)} from the bundle, ${fmtBytes(b.reusedBytes)} local`}`);
        for (const b of r.incomplete) {
          console.log(`INCOMPLETE ${b.name}: ${b.missingCount} chunks neither here nor in the bundle`);
          for (const m of b.missing) console.log(`  missing chunk ${toHex(m.hash)} at ${m.offset} (${m.size} bytes)`);
        }
      }
      if (r.incomplete.length) process.exitCode = 1;
    });
  });

try {
  // Bare `cabstore` is bad usage: say how to use it, exit 2.
  if (process.argv.length <= 2) throw new CommanderError(2, 'cabstore.usage', 'error: a command is needed');
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') process.exit(0);
    process.stderr.write(`cabstore: ${e.message.replace(/^error: /, '')}\n`);
    if (e.code === 'cabstore.usage') process.stderr.write(`${program.helpInformation()}`);
    process.exit(2);
  }
  if (isCabError(e)) {
    process.stderr.write(`cabstore: ${e.message.split('\n')[0]}\n`);
    process.exit(1);
  }
  process.stderr.write(`cabstore: ${(e as Error).message ?? String(e)}\n`);
  process.exit(1);
}
