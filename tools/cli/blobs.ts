// Commands that read or remove blobs of an existing store: get, cat, ls,
// stat (here or on a server), rm.
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { checkBlobName } from '../../src/format/layout.js';
import { isCabError } from '../../src/errors.js';
import { openOutput } from '../../src/disk/output.js';
import { ioError } from '../../src/errors.js';
import { Progress } from '../progress.js';
import { hex as toHex, json, lib, out, readText, token, withScratchStore, withStore } from './context.js';

/** Writes a blob's bytes to `output`, or to stdout: `open` gives them, and their size as known at the start. */
async function writeBytes(name: string, output: string | undefined, open: () => Promise<{ size: number; stream: () => Readable }>): Promise<void> {
  const src = await open();
  if (output === undefined) {
    try {
      await pipeline(src.stream(), process.stdout);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EPIPE') throw e;
    }
    return; // EPIPE: the reader went away, the end of the output, not a failure
  }
  // The output is open before the blob is read, and the loop that writes is the only consumer of the
  // stream (the progress counts there): no byte can go elsewhere. A failed get leaves no file, no temp file.
  const o = await openOutput(output);
  try {
    const p = new Progress(`get ${name.slice(0, 8)}`, src.size, process.stderr.isTTY === true);
    for await (const b of src.stream() as AsyncIterable<Uint8Array>) {
      await o.write(b);
      p.add(b.length);
    }
    await o.commit();
    p.end();
  } finally {
    await o.abort();
  }
}

async function writeBlob(name: string, output?: string, follow = false): Promise<void> {
  await withStore(false, async (s) => {
    const r = await s.newBlobReader(name, { follow });
    try {
      await writeBytes(name, output, async () => ({ size: r.size, stream: () => r.stream() }));
    } finally {
      await r.close();
    }
  });
}

/** get --from URL: the bytes from a server, each chunk checked as it comes and the root at the end; no store here. */
async function writeRemote(url: string, name: string, output: string | undefined, o: { tokenFile?: string; ca?: string; follow?: boolean }): Promise<void> {
  checkBlobName(name);
  const { connect } = await lib.net();
  await withScratchStore(async (s) => {
    const c = await connect(s, url, { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}) });
    try {
      await writeBytes(name, output, async () => ({ size: (await c.stat(name)).size, stream: () => c.stream(name, { follow: o.follow === true }) }));
    } finally {
      await c.close();
    }
  });
}

export function blobCommands(program: Command): void {
  program
    .command('get')
    .description('write a blob to a file (-o) or to stdout')
    .argument('<name>')
    .option('-o, --output <file>', 'write here instead of stdout')
    .option('--follow', 'the blob is being written: write its bytes as they are flushed, and end when it is finalized')
    .option('--from <url>', "read it from a server's store (no store needed here)")
    .option('--token-file <file>', 'the token (first line) for --from; else $CABSTORE_TOKEN')
    .option('--ca <file>', 'PEM CA for wss://')
    .action(async (name: string, o: { output?: string; follow?: boolean; from?: string; tokenFile?: string; ca?: string }) =>
      o.from === undefined ? writeBlob(name, o.output, o.follow) : writeRemote(o.from, name, o.output, o),
    );

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
    .option('--token-file <file>', 'the token (first line) for a server')
    .action(async (a: string, b: string | undefined, o: { tokenFile?: string }) => {
      if (b !== undefined) {
        // Asks the server only: no store is needed here, so a scratch one stands in for it.
        const { connect } = await lib.net();
        await withScratchStore(async (s) => {
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
