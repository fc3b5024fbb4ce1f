// `signpost NAME [--add URL]... [--remove URL]... [--token-name NAME]`: shows
// or edits where a blob may be found (the signpost table). Peers named by a
// ws:// or wss:// URL are the sources of `pull NAME`; a token name says which
// $CABSTORE_TOKEN_<NAME> holds the token for them (never the token itself).
import type { Command } from 'commander';
import { CabError } from '../../src/errors.js';
import { checkBlobName } from '../../src/format/layout.js';
import type { Signpost, SignpostLocation } from '../../src/store.js';
import { out, withStore } from './context.js';

const collect = (v: string, all: string[]): string[] => [...all, v];

interface SignpostOptions {
  add: string[];
  remove: string[];
  tokenName?: string;
}

/** The signpost as text: a line per peer (most recently seen first), then its syncgroups and fetch attempts. */
function describe(name: string, sp: Signpost | undefined): string {
  const peers = Object.entries(sp?.locations ?? {}).sort(([, a], [, b]) => b.whenSeen.getTime() - a.whenSeen.getTime());
  if (peers.length === 0 && !sp?.sgIds.length) return `${name}: no peers recorded`;
  const role = (l: SignpostLocation) => [l.isServer ? 'server' : '', l.isProxy ? 'proxy' : ''].filter(Boolean).join(' ');
  return [
    `${name}:`,
    ...peers.map(([peer, l]) => `  ${peer}  seen ${l.whenSeen.toISOString()}${role(l) ? `  ${role(l)}` : ''}${l.tokenName === undefined ? '' : `  token ${l.tokenName}`}`),
    ...(sp?.sgIds.length ? [`  syncgroups ${sp.sgIds.join(' ')}`] : []),
    ...(sp?.fetchAttempts ? [`  fetch attempts ${sp.fetchAttempts}`] : []),
  ].join('\n');
}

export function signpostCommand(program: Command): void {
  program
    .command('signpost')
    .description("show or edit where a blob may be found: the peers `pull NAME` fetches it from")
    .argument('<name>')
    .option('--add <url>', 'record a server (ws:// or wss://) that holds the blob (repeatable)', collect, [])
    .option('--remove <peer>', 'forget a peer (repeatable)', collect, [])
    .option('--token-name <name>', 'with --add: the name of the token for those servers, read from $CABSTORE_TOKEN_<NAME> by pull')
    .action(async (name: string, o: SignpostOptions) => {
      checkBlobName(name);
      for (const url of o.add) {
        if (!/^wss?:\/\/./.test(url)) throw new CabError('ERR_BAD_ARGUMENT', `--add ${JSON.stringify(url)}: a server is a ws:// or wss:// URL`);
      }
      if (o.tokenName !== undefined && o.add.length === 0) throw new CabError('ERR_BAD_ARGUMENT', '--token-name goes with --add');
      await withStore(false, async (s) => {
        let sp = await s.getSignpost(name);
        if (o.add.length || o.remove.length) {
          const now = new Date();
          const tokenName = o.tokenName;
          sp = await s.updateSignpost(name, {
            locations: {
              ...Object.fromEntries(o.remove.map((peer) => [peer, null])),
              ...Object.fromEntries(o.add.map((url) => [url, { whenSeen: now, isProxy: false, isServer: true, ...(tokenName === undefined ? {} : { tokenName }) }])),
            },
          });
        }
        out(describe(name, sp), { name, locations: sp?.locations ?? {}, sgIds: sp?.sgIds ?? [], fetchAttempts: sp?.fetchAttempts ?? 0 });
      });
    });
}
