// `get NAME --from URL [--range START-END] [--hash HEX]`: a range (or all)
// of a remote blob, every byte checked against the blob's root before it is
// written, nothing stored here.
import type { Readable } from 'node:stream';
import { once } from 'node:events';
import { CabError } from '../../src/errors.js';
import { openOutput } from '../../src/disk/output.js';
import { Progress } from '../progress.js';
import { cleanlyInterruptible, lib, readText, token, withScratchStore } from './context.js';

export interface RemoteGetOptions {
  from: string;
  range?: { start: number; end?: number };
  hash?: string;
  size?: number;
  output?: string;
  tokenFile?: string;
  ca?: string;
}

/**
 * Writes `stream` (of `size` bytes) to `output`, or to stdout. A file is
 * committed only once the stream has ended: a failed get (or one stopped by
 * Ctrl-C, its stream made with the command's signal) leaves no file and no
 * temp file. On stdout, a reader that goes away (EPIPE) ends it quietly.
 */
export async function writeOut(stream: Readable, size: number, label: string, output?: string): Promise<void> {
  if (output === undefined) {
    // Not pipeline(): a failing stream would destroy stdout with its error, thrown again by stdout's error
    // handler (tools/cli.ts) as an uncaught exception. A reader that goes away (EPIPE) exits there, quietly.
    for await (const b of stream as AsyncIterable<Uint8Array>) {
      if (!process.stdout.write(b)) await once(process.stdout, 'drain');
    }
    return;
  }
  // The output is open before the blob is read, and the loop that writes is the only consumer of the stream.
  const o = await openOutput(output);
  try {
    const p = new Progress(label, size, process.stderr.isTTY === true);
    for await (const b of stream as AsyncIterable<Uint8Array>) {
      await o.write(b);
      p.add(b.length);
    }
    await o.commit();
    p.end();
  } finally {
    await o.abort();
  }
}

/** Interrupted: the get stops; with -o, FILE is left as it was (no temp file), and the command dies of the signal. */
export const notWritten = (output: string | undefined): string => (output === undefined ? '' : `interrupted: ${output} not written`);

export async function remoteGet(name: string, o: RemoteGetOptions): Promise<void> {
  const range = o.range ?? { start: 0 };
  const { connect } = await lib.net();
  // A connection needs a store: a scratch one stands in, and nothing lands in it (nor stays, even after Ctrl-C).
  await cleanlyInterruptible(notWritten(o.output), (signal) => withScratchStore(async (s) => {
    const c = await connect(s, o.from, { token: token(o), ...(o.ca ? { ca: readText(o.ca) } : {}), signal });
    try {
      const r = await c.openReader(name, { ...(o.hash === undefined ? {} : { hash: o.hash }), ...(o.size === undefined ? {} : { size: o.size }) });
      const end = Math.min(range.end ?? r.size, r.size);
      if (range.start > r.size) throw new CabError('ERR_ILLEGAL_POSITION', `--range starts at ${range.start}, past the end of the blob (${r.size})`, { blob: name, offset: range.start });
      await writeOut(r.stream({ start: range.start, end, signal }), end - range.start, `get ${name.slice(0, 8)}`, o.output);
    } finally {
      await c.close();
    }
  }));
}
