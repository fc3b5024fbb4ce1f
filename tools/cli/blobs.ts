// Commands that read or remove blobs of an existing store: get, cat, ls,
// stat (here or on a server), rm.
import type fsp from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { ioError } from '../../src/errors.js';
import { Progress } from '../progress.js';
import { hex, json, lib, out, token, withStore } from './context.js';

async function writeBlob(name: string, output?: string): Promise<void> {
  const { replaceDurable, writeAll } = await lib.durable();
  await withStore(false, async (s) => {
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

export function blobCommands(program: Command): void {
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
      await withStore(false, async (s) => {
        const rows = [];
        for await (const name of s.listBlobIds()) {
          const r = await s.newBlobReader(name).catch(() => undefined);
          if (!r) continue;
          await r.close();
          rows.push({ name, size: r.size, finalized: r.isFinalized, hash: r.hash ? hex(r.hash) : null });
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
        const { connect } = await lib.net();
        await withStore(false, async (s) => {
          const c = await connect(s, a, { token: token(o) });
          try {
            const st = await c.stat(b);
            out(`size ${st.size}\nfinalized ${st.finalized}\nhash ${st.hash ? hex(st.hash) : '-'}`, { name: b, ...st });
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
        const info = { name: a, size: r.size, finalized: r.isFinalized, hash: r.hash ? hex(r.hash) : null, chunks, sharedBytes: shared, damagedAt: r.damagedAt ?? null };
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
