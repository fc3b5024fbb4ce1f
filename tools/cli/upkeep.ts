// Commands that look after a store: gc and fsck.
import type { Command } from 'commander';
import { CabError } from '../../src/errors.js';
import { Progress, count, fmtBytes } from '../progress.js';
import { sizeArg } from '../args.js';
import { json, out, withStore } from './context.js';

export function upkeepCommands(program: Command): void {
  program
    .command('gc')
    .description('delete fragments no blob uses (safe while other processes use the store)')
    .option('--dry-run', 'report what it would delete and evict; delete nothing')
    .option('--max-bytes <size>', 'also evict blobs until the store fits (64KiB, 1GiB, ...): least recently accessed first (metadata "accessed", set by the app and by pull/push/import, not by reads), else oldest', sizeArg)
    .option('--wait', 'wait for a GC already running instead of failing')
    .action(async (o: { dryRun?: boolean; maxBytes?: number; wait?: boolean }) => {
      await withStore(false, async (s) => {
        const tty = process.stderr.isTTY === true;
        const r = await s.gc({
          dryRun: o.dryRun,
          wait: o.wait,
          ...(o.maxBytes !== undefined ? { maxBytes: o.maxBytes } : {}),
          onProgress: (p) => tty && process.stderr.write(`\rgc ${p.phase} ${p.done}\x1b[K`),
        });
        if (tty) process.stderr.write('\r\x1b[K');
        const [del, evict] = r.dryRun ? ['would delete', 'would evict'] : ['deleted', 'evicted'];
        out(
          `${del} ${count(r.fragmentsDeleted, 'fragment')} (${fmtBytes(r.bytesDeleted)}), kept ${r.fragmentsKept} (${fmtBytes(r.bytesKept)}), ` +
            `${count(r.tempFilesDeleted, 'temp file')}, ${count(r.indexEntriesRemoved, 'index entry', 'index entries')}, ${evict} ${count(r.evicted.length, 'blob')}, in ${r.seconds.toFixed(2)} s` +
            (r.bucket
              ? `\nbucket: ${del} ${r.bucket.fragmentsDeleted} fragments (${fmtBytes(r.bucket.bytesDeleted)}), kept ${r.bucket.fragmentsKept} (${fmtBytes(r.bucket.bytesKept)}), ` +
                `${count(r.bucket.uploadsAborted, 'upload')} aborted; read ${count(r.bucket.descriptors, 'published descriptor')}, ${count(r.bucket.leases, 'lease')}`
              : '') +
            r.evicted.map((name) => `\n${evict} ${name}`).join('') +
            r.passedOver.map((name) => `\nkept    ${name} (evicting it frees nothing: a blob that stays shares its data)`).join(''),
          r,
        );
      });
    });

  program
    .command('fsck')
    .description('check the store; exits 1 if it finds a problem it did not repair, or a damaged blob')
    .option('--verify', 'also hash the data: every blob, finalized or not, against the hashes it records')
    .option('--repair', 'fix what can be fixed without losing anything')
    .action(async (o: { verify?: boolean; repair?: boolean }) => {
      const r = await withStore(
        false,
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
        // Plain fsck reads no data: say what it checked. --verify hashes the blobs' content
        // (bytes that blobs share are read once per blob).
        const checked = o.verify
          ? `${count(r.blobs, 'blob')} verified (hashed ${fmtBytes(r.bytesVerified)} of blob content; ${count(r.fragments, 'fragment')})`
          : `${count(r.blobs, 'blob')} checked (structure, fragment sizes, index; --verify also hashes the data)`;
        console.log(`${checked}, ${count(r.problems.length, 'problem')}, ${r.repaired} repaired, ${r.unrepaired} not repaired, ${r.seconds.toFixed(2)} s`);
      }
      // A damaged blob is a problem until a pull or an import heals it, repaired (recorded) or not.
      if (r.unrepaired > 0 || r.damaged.length > 0) {
        const damaged = new Set(r.damaged.map((d) => d.blob)).size;
        throw new CabError('ERR_FSCK_FAILED', `${count(r.unrepaired, 'problem')} not repaired, ${count(damaged, 'blob')} damaged (the report lists them)`);
      }
    });
}
