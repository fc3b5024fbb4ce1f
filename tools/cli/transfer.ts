// Commands that move blobs between stores: pull and push (with a server),
// have, export and import (with a bundle file).
import type { Command } from 'commander';
import { CabError } from '../../src/errors.js';
import { checkBlobName } from '../../src/format/layout.js';
import { Progress, fmtBytes } from '../progress.js';
import { statInput } from '../source.js';
import { hex as toHex, json, lib, out, readText, replacer, startHashing, token, withScratchStore, withStore, withStoreMadeAfter } from './context.js';

/** Missing chunks an incomplete import lists per blob; --json has the library's list (the first 100). */
const MISSING_SHOWN = 10;

const transferOpts = (c: Command) => c.option('--token-file <file>', 'the token (first line); else $CABSTORE_TOKEN').option('--ca <file>', 'PEM CA for wss://');

export function transferCommands(program: Command): void {
  transferOpts(program.command('pull').description('fetch a blob from a server; only what this store lacks travels').argument('<url>').argument('<name>')).action(
    async (url: string, name: string, o: { tokenFile?: string; ca?: string }) => {
      checkBlobName(name);
      await startHashing();
      const { connect } = await lib.net();
      const opts = { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}) };
      // With no store here yet, one is made only for a blob the server has, finalized: ask it first.
      const first = () =>
        withScratchStore(async (scratch) => {
          const c = await connect(scratch, url, opts);
          try {
            const st = await c.stat(name);
            if (!st.finalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `the sender's blob ${name} is not finalized`, { blob: name });
          } finally {
            await c.close();
          }
        });
      await withStoreMadeAfter(first, async (s) => {
        const c = await connect(s, url, opts);
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
      const { connect } = await lib.net();
      await withStore(false, async (s) => {
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
      const { writeHave } = await lib.bundle();
      await withStore(false, async (s) => {
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
      const { exportBundle } = await lib.bundle();
      await withStore(false, async (s) => {
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
      await statInput(file); // before a store is made for it
      await startHashing();
      const { importBundle } = await lib.bundle();
      await withStore(true, async (s) => {
        const p = new Progress('import');
        const r = await importBundle(s, file, { onProgress: (b) => p.set(b) });
        p.end();
        if (json()) console.log(JSON.stringify(r, replacer));
        else {
          for (const b of r.imported) console.log(`${b.name} ${toHex(b.hash)}: ${b.alreadyHad ? 'already here' : `${fmtBytes(b.receivedBytes)} from the bundle, ${fmtBytes(b.reusedBytes)} local`}`);
          for (const b of r.incomplete) {
            console.log(`INCOMPLETE ${b.name}: ${b.missingCount} chunks neither here nor in the bundle`);
            for (const m of b.missing.slice(0, MISSING_SHOWN)) console.log(`  missing chunk ${toHex(m.hash)} at ${m.offset} (${m.size} bytes)`);
            if (b.missingCount > MISSING_SHOWN) console.log(`  and ${b.missingCount - MISSING_SHOWN} more (--json lists the first ${b.missing.length})`);
          }
        }
        if (r.incomplete.length) {
          const missing = r.incomplete.reduce((n, b) => n + b.missingCount, 0);
          throw new CabError(
            'ERR_NO_SUCH_CHUNK',
            `${r.incomplete.length} of the bundle's blobs not imported: ${missing} chunks they need are neither here nor in ${file}`,
            { path: file, blob: r.incomplete[0]!.name },
          );
        }
      });
    });
}
