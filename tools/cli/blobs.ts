// Commands that read or remove blobs of an existing store: get, cat, ls,
// stat (here or on a server), rm.
import type { Command } from 'commander';
import { rangeArg, sizeArg, usage } from '../args.js';
import { isCabError } from '../../src/errors.js';
import { ioError } from '../../src/errors.js';
import { checkBlobName } from '../../src/format/layout.js';
import { notWritten, remoteGet, writeOut, type RemoteGetOptions } from './remote-get.js';
import { cleanlyInterruptible, hex as toHex, json, lib, out, readText, token, withScratchStore, withStore } from './context.js';

async function writeBlob(name: string, output?: string, follow = false): Promise<void> {
  await cleanlyInterruptible(notWritten(output), (signal) => withStore(false, async (s) => {
    const r = await s.newBlobReader(name, { follow });
    try {
      // Not an error (a partial upload may be worth reading), but not the whole blob either: say so.
      if (!follow && !r.isFinalized) process.stderr.write(`cabstore: blob ${name} is not finalized: these are the ${r.size} bytes durable so far (--follow waits for the rest)\n`);
      await writeOut(r.stream({ signal }), r.size, `get ${name.slice(0, 8)}`, output);
    } finally {
      await r.close();
    }
  }));
}

/** get --from URL --follow: a blob the server is still writing, each chunk checked as it comes and the root at the end; no store here. */
async function followRemote(url: string, name: string, o: { output?: string; tokenFile?: string; ca?: string }): Promise<void> {
  checkBlobName(name);
  const { connect } = await lib.net();
  await cleanlyInterruptible(notWritten(o.output), (signal) => withScratchStore(async (s) => {
    const c = await connect(s, url, { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}), signal });
    try {
      const size = (await c.stat(name, { signal })).size;
      await writeOut(c.stream(name, { follow: true, signal }), size, `get ${name.slice(0, 8)}`, o.output);
    } finally {
      await c.close();
    }
  }));
}

export function blobCommands(program: Command): void {
  program
    .command('get')
    .description('write a blob to a file (-o) or to stdout; with --from, a range (or all) of a blob on a server, every byte verified, nothing stored')
    .argument('<name>')
    .option('-o, --output <file>', 'write here instead of stdout')
    .option('--follow', 'the blob is being written: write its bytes as they are flushed, and end when it is finalized')
    .option('--from <url>', 'read the blob from this server instead of the store')
    .option('--range <start-end>', 'with --from: bytes START to END (exclusive), or START- to the end', rangeArg)
    .option('--hash <hex>', "with --from: the blob's root, as you know it; a server announcing another fails with ERR_HASH_MISMATCH")
    .option('--size <bytes>', "with --hash: the blob's size as you know it (a root alone does not pin a 64-byte blob)", sizeArg)
    .option('--token-file <file>', 'with --from: the token (first line); else $CABSTORE_TOKEN')
    .option('--ca <file>', 'with --from: PEM CA for wss://')
    .action(async (name: string, o: Partial<RemoteGetOptions> & { follow?: boolean }) => {
      if (o.size !== undefined && o.hash === undefined) usage('--size goes with --hash');
      if (o.follow && (o.range !== undefined || o.hash !== undefined)) usage('--follow reads a whole blob as it grows: not with --range or --hash');
      if (o.from !== undefined) return o.follow ? followRemote(o.from, name, o) : remoteGet(name, { ...o, from: o.from });
      if (o.range !== undefined || o.hash !== undefined) usage('--range and --hash go with --from');
      return writeBlob(name, o.output, o.follow);
    });

  program
    .command('cat')
    .description('write a blob to stdout')
    .argument('<name>')
    .option('--follow', 'the blob is being written: write its bytes as they are flushed, and end when it is finalized')
    .action(async (name: string, o: { follow?: boolean }) => writeBlob(name, undefined, o.follow));

  program
    .command('ls')
    .description('list blobs: name, size, finalized, hash')
    .action(async () => {
      await withStore(false, async (s) => {
        const rows = [];
        let failed = 0;
        for await (const name of s.listBlobIds()) {
          let r;
          try {
            r = await s.newBlobReader(name);
          } catch (e) {
            if (isCabError(e, 'ERR_NO_SUCH_BLOB')) continue; // deleted since it was listed
            // Not hidden: a blob that cannot be opened is named, with its code, and ls fails once it has listed the rest.
            process.stderr.write(`cabstore: ls: blob ${name}: ${ioError(e, 'opening it', { blob: name }).message.split('\n')[0]}\n`);
            failed++;
            continue;
          }
          await r.close();
          rows.push({ name, size: r.size, finalized: r.isFinalized, hash: r.hash ? toHex(r.hash) : null });
        }
        rows.sort((a, b) => (a.name < b.name ? -1 : 1));
        if (json()) console.log(JSON.stringify(rows));
        else for (const r of rows) console.log(`${r.name} ${String(r.size).padStart(14)} ${r.finalized ? 'final ' : 'open  '} ${r.hash ?? '-'}`);
        if (failed) process.exitCode = 1;
      });
    });

  program
    .command('stat')
    .description('facts about a blob, here (NAME) or on a server (URL NAME: no store needed here)')
    .argument('<name-or-url>')
    .argument('[name]')
    .option('--token-file <file>', 'the token (first line) for a server; else $CABSTORE_TOKEN')
    .option('--ca <file>', 'PEM CA for a wss:// server')
    .action(async (a: string, b: string | undefined, o: { tokenFile?: string; ca?: string }) => {
      if (b !== undefined) {
        // Asks the server only, on a dial: no store is needed here.
        const d = (await lib.dial()).dial(a, { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}) });
        try {
          const st = await d.stat(b);
          out(`size ${st.size}\nfinalized ${st.finalized}\nhash ${st.hash ? toHex(st.hash) : '-'}`, { name: b, ...st });
        } finally {
          await d.close();
        }
        return;
      }
      await withStore(false, async (s) => {
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
      await withStore(false, async (s) => {
        for (const n of names) await s.deleteBlob(n);
      });
    });
}
