// Commands that move blobs between stores: pull and push (with a server),
// have, export and import (with a bundle file).
import type { Command } from 'commander';
import { CabError, isCabError } from '../../src/errors.js';
import type { BlobStore } from '../../src/store.js';
import type { TransferProgress } from '../../src/transfer/stats.js';
import { checkBlobName } from '../../src/format/layout.js';
import { Progress, count, fmtBytes } from '../progress.js';
import { statInput } from '../source.js';
import { sizeArg, usage } from '../args.js';
import type { Dial } from '../../src/transfer/dial.js';
import type { RemoteStat } from '../../src/transfer/stats.js';
import { Interrupted, cabstoreCommand, cleanlyInterruptible, hex as toHex, json, lib, out, readText, replacer, startHashing, token, untilSignal, withStore, withStoreMadeAfter } from './context.js';

/** Missing chunks an incomplete import lists per blob; --json has the library's list (the first 100). */
const MISSING_SHOWN = 10;

const transferOpts = (c: Command) => c.option('--token-file <file>', 'the token (first line); else $CABSTORE_TOKEN').option('--ca <file>', 'PEM CA for wss://');

/** Repeatable options (--from URL --from URL): each value added to the list. */
const collect = (v: string, all: string[]): string[] => [...all, v];

export function transferCommands(program: Command): void {
  transferOpts(
    program
      .command('pull')
      .description("fetch a blob from servers (URL NAME, more at once with --from), or from the peers in its signpost (NAME); only what this store lacks travels")
      .argument('<url-or-name>', 'a server, or the blob (then its signpost says where)')
      .argument('[name]', 'the blob, after a URL')
      .option('--from <url>', 'another server to pull from at the same time (repeatable)', collect, [])
      .option('--hash <hex>', "the blob's root as you know it: a server announcing another is not used")
      .option('--size <bytes>', 'with --hash: the blob\'s size as you know it (a root alone does not pin a 64-byte blob)', sizeArg),
  ).action(async (a: string, b: string | undefined, o: PullOptions) => {
    if (b === undefined && /^wss?:\/\//.test(a)) usage(`pull ${a}: the blob's name is missing (pull URL NAME, or pull NAME for its signpost's peers)`);
    const name = b ?? a;
    const urls = [...(b === undefined ? [] : [a]), ...o.from];
    checkBlobName(name);
    if (o.size !== undefined && o.hash === undefined) usage('pull: --size goes with --hash');
    // From one server: the connection, and the blob's stat, get under way before the hashing thread starts and
    // the store's code loads; they go on while it loads and the store opens (issue 15).
    const d = urls.length === 1 && o.hash === undefined ? (await lib.dial()).dial(urls[0]!, { ...serverOpts(o), prefetch: name }) : undefined;
    const asked = d?.stat(name);
    asked?.catch(() => {}); // awaited by pullOne, unless the store is there already
    // Two turns of the event loop (the connect is made in the first): a local server's TCP connect completes,
    // and the upgrade request leaves before the loading, which holds the loop for some 50 ms.
    for (let turn = 0; d && turn < 2; turn++) await new Promise((r) => setImmediate(r));
    await startHashing();
    const flags = { '--from': o.from, '--hash': o.hash, '--size': o.size, '--token-file': o.tokenFile, '--ca': o.ca };
    const again = cabstoreCommand('pull', a, ...(b === undefined ? [] : [b]), ...Object.entries(flags).flatMap(([f, v]) => [v ?? []].flat().flatMap((x) => [f, String(x)])));
    if (d) return pullOne(d, asked!, name, again);
    return pullMany(urls, name, o, again);
  });

  transferOpts(program.command('push').description('send a blob to a server; only what it lacks travels').argument('<url>').argument('<name>')).action(
    async (url: string, name: string, o: { tokenFile?: string; ca?: string }) => {
      const { connect } = await lib.net();
      await withStore(false, async (s) => {
        const c = await connect(s, url, serverOpts(o));
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
      await cleanlyInterruptible(`interrupted: ${o.output} not written`, (signal) => withStore(false, async (s) => {
        const r = await writeHave(s, o.output, { signal });
        out(`${o.output}: ${count(r.chunks, 'chunk')} in ${fmtBytes(r.bytes)}`, { file: o.output, ...r });
      }));
    });

  program
    .command('export')
    .description('write a bundle of blobs with only the chunks the --have file lacks')
    .argument('<name...>')
    .requiredOption('-o, --output <bundle>', 'the bundle file')
    .option('--have <file>', "the receiver's have file")
    .action(async (names: string[], o: { output: string; have?: string }) => {
      const { exportBundle } = await lib.bundle();
      await cleanlyInterruptible(`interrupted: ${o.output} not written`, (signal) => withStore(false, async (s) => {
        const p = new Progress('export');
        const r = await exportBundle(s, names, o.output, { have: o.have, onProgress: (b) => p.set(b), signal });
        p.end();
        out(`${o.output}: ${count(r.blobs, 'blob')}, ${count(r.chunks, 'chunk')} (${fmtBytes(r.dataBytes)} of data), ${fmtBytes(r.bytes)}`, { file: o.output, ...r });
      }));
    });

  program
    .command('import')
    .description('rebuild blobs from a bundle and local data; every chunk and blob verified')
    .argument('<bundle>')
    .action(async (file: string) => {
      await statInput(file); // before a store is made for it
      await startHashing();
      const { checkBundle, importBundle } = await lib.bundle();
      // With no store here, the bundle is read through and checked first: a store is made only for one that checks out.
      await withStoreMadeAfter(async () => void (await checkBundle(file)), async (s) => {
        const p = new Progress('import');
        const r = await importBundle(s, file, { onProgress: (b) => p.set(b) });
        p.end();
        if (json()) console.log(JSON.stringify(r, replacer));
        else {
          for (const b of r.imported) console.log(`${b.name} ${toHex(b.hash)}: ${b.alreadyHad ? 'already here' : `${fmtBytes(b.receivedBytes)} from the bundle, ${fmtBytes(b.reusedBytes)} local`}`);
          for (const b of r.incomplete) {
            console.log(`INCOMPLETE ${b.name}: ${count(b.missingCount, 'chunk')} neither here nor in the bundle`);
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

interface PullOptions {
  from: string[];
  hash?: string;
  size?: number;
  tokenFile?: string;
  ca?: string;
}

/** The options of a connection to a server: the token, and the CA for wss://. */
const serverOpts = (o: { tokenFile?: string; ca?: string }) => ({ token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}) });

/**
 * A pull from one server, over dial `d` (already asked the blob's stat,
 * `asked`): its stats, and the bytes on the wire. With no store here yet,
 * one is made only for a blob the server has, finalized.
 */
async function pullOne(d: Dial, asked: Promise<RemoteStat>, name: string, again: string): Promise<void> {
  try {
    await withStoreMadeAfter(
      async () => {
        finalized(await asked, name);
      },
      async (s) => {
        const { connect } = await lib.net();
        const c = await connect(s, d);
        try {
          const p = progress(name);
          const st = await interruptible(s, name, again, (signal) => c.pull(name, { onProgress: p.on, signal }));
          p.end();
          out(
            `${name} ${toHex(st.hash)}: ${st.alreadyHad ? 'already here' : `${fmtBytes(st.receivedBytes)} received, ${fmtBytes(st.reusedBytes)} reused`}, ${fmtBytes(c.wire.sent + c.wire.received)} on the wire`,
            { ...st, wire: c.wire },
          );
        } finally {
          await c.close();
        }
      },
    );
  } finally {
    await d.close(); // one no connect took: the store was not made or failed to open (else the client's to close)
  }
}

/**
 * A pull from many servers at once, or from the signpost's peers (no URL):
 * fetchBlob. A token name a signpost gives is looked up in
 * $CABSTORE_TOKEN_<NAME> (upper case, other characters as _).
 */
async function pullMany(urls: string[], name: string, o: PullOptions, again: string): Promise<void> {
  const { fetchBlob } = await import('../../src/transfer/fetch-blob.js');
  const ca = o.ca ? readText(o.ca) : undefined;
  const p = progress(name);
  const options = {
    ...(urls.length ? { from: urls } : {}),
    ...(o.hash === undefined ? {} : { hash: o.hash }),
    ...(o.size === undefined ? {} : { size: o.size }),
    ...(ca === undefined ? {} : { ca }),
    token: token(o),
    tokens: (n: string) => {
      const v = `CABSTORE_TOKEN_${n.toUpperCase().replace(/[^A-Z0-9_]/g, '_')}`;
      if (process.env[v] === undefined) throw new CabError('ERR_AUTH', `no token named ${JSON.stringify(n)} (the signpost's token name): set $${v}`, { found: n });
      return process.env[v];
    },
    onProgress: p.on,
  };
  const pull = async (s: BlobStore) => {
    let st;
    try {
      st = await interruptible(s, name, again, (signal) => fetchBlob(s, name, { ...options, signal }));
    } catch (e) {
      throw e instanceof Interrupted ? e : noSourceLeft(e, name);
    }
    p.end();
    const lines = st.sources.map((x) => `  ${x.source}: ${x.dropped ? `dropped, ${x.dropped.message.split('\n')[0]}` : `${fmtBytes(x.receivedBytes)} in ${count(x.chunks, 'chunk')}`}`);
    const used = st.sources.filter((x) => !x.dropped).length;
    out(
      [`${name} ${toHex(st.hash)}: ${st.alreadyHad ? 'already here' : `${fmtBytes(st.receivedBytes)} received, ${fmtBytes(st.reusedBytes)} reused`}, from ${used} of ${st.sources.length} sources`, ...lines].join('\n'),
      st,
    );
  };
  // No URL: the signpost is in the store, which must be there. URLs: a store is made once a server has the blob.
  if (urls.length === 0) await withStore(false, pull);
  else await withStoreMadeAfter(() => firstHas(urls, name, { token: token(o), ...(ca === undefined ? {} : { ca }) }, o.hash), pull);
}

/**
 * Runs a pull with a signal that Ctrl-C or SIGTERM fires: the pull stops
 * and keeps what it verified, durably, unfinalized; the command then says
 * how much the blob holds and how to go on, and dies of the signal, as put
 * does.
 */
async function interruptible<T>(s: BlobStore, name: string, again: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  return untilSignal(async (signal) => {
    try {
      return await fn(signal);
    } catch (e) {
      if (!signal.aborted) throw e;
      const held = await s.stat(name).then((st) => st.size, () => 0);
      throw new Interrupted(signal.reason as NodeJS.Signals, `interrupted: blob ${name} holds the first ${held} bytes, durably, unfinalized; to go on: ${again}`);
    }
  });
}

/** Resolves once one of the servers has blob `name` finalized (with root `hash`, if given); else fails with the last server's reason. */
async function firstHas(urls: string[], name: string, opts: { token: string | undefined; ca?: string }, hash?: string): Promise<void> {
  const { dial } = await lib.dial();
  let last: unknown;
  for (const url of urls) {
    try {
      const d = dial(url, opts);
      try {
        const st = finalized(await d.stat(name), name);
        if (hash !== undefined && toHex(st.hash!) !== hash.toLowerCase()) {
          throw new CabError('ERR_HASH_MISMATCH', `${url} announces root ${toHex(st.hash!)} for blob ${name}, not ${hash}`, { blob: name });
        }
      } finally {
        await d.close();
      }
      return;
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

/** A sender's stat of a blob that can be pulled (finalized); ERR_BLOB_NOT_FINALIZED otherwise. */
function finalized(st: RemoteStat, name: string): RemoteStat {
  if (!st.finalized) throw new CabError('ERR_BLOB_NOT_FINALIZED', `the sender's blob ${name} is not finalized`, { blob: name });
  return st;
}

/** A pull that failed with no source left says what each source did, in one line. */
function noSourceLeft(e: unknown, name: string): unknown {
  const sources = isCabError(e) ? (e.data.sources as Array<{ source: string; dropped?: { code: string } }> | undefined) : undefined;
  if (!isCabError(e) || !sources || sources.length < 2) return e;
  const each = sources.map((x) => `${x.source} ${x.dropped?.code ?? 'ok'}`).join(', ');
  return new CabError(e.code, `no source left for blob ${name} (${each}); the last: ${e.message.split('\n')[0]!.replace(/^\w+: /, '')}`, e.data, { cause: e });
}

/** The progress bar of a pull, made at its first report (which gives the size). */
function progress(name: string): { on: (x: TransferProgress) => void; end: () => void } {
  let p: Progress | undefined;
  return {
    on: (x) => {
      p ??= new Progress(`pull ${name.slice(0, 8)}`, x.size);
      p.set(x.resumedFrom + x.verifiedBytes);
    },
    end: () => p?.end(),
  };
}
