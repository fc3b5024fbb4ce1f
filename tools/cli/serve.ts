// `cabstore serve`: the store over WebSocket and plain HTTP (ranged GETs, tus
// uploads) on one port until SIGINT or SIGTERM, with a line on stderr for each
// WebSocket connection that ends (--quiet: none).
import type { Command } from 'commander';
import type { ServeEvent } from '../../src/transfer/serve.js';
import { fmtBytes } from '../progress.js';
import { countArg, durationArg, parseTokens, portArg, sizeArg, usage } from '../args.js';
import { json, lib, out, readText, startHashing, withStore } from './context.js';

/**
 * One log line: time (when it ended), peer, op (the most it did), blobs,
 * chunk bytes sent and received (both: a connection may pull and push),
 * duration, and ok or the error code. With --json, the event as an object
 * with `time`.
 */
export function logLine(e: ServeEvent, asJson: boolean): string {
  const time = new Date(e.start + e.ms).toISOString();
  if (asJson) return JSON.stringify({ time, ...e });
  const blobs = e.blobs.length ? e.blobs.join(',') : '-';
  return `${time} ${e.peer} ${e.op} ${blobs} sent ${fmtBytes(e.bytesSent)} received ${fmtBytes(e.bytesReceived)} ${(e.ms / 1000).toFixed(2)}s ${e.error ?? 'ok'}`;
}

export function serveCommand(program: Command): void {
  program
    .command('serve')
    .description('serve the store over WebSocket and HTTP (GET /blobs/NAME, tus uploads at /files/) until interrupted; logs a line per connection on stderr')
    .option('--host <host>', 'address to bind', '127.0.0.1')
    .option('--port <port>', 'port (0: any free one)', portArg, 0)
    .option('--token-file <file>', 'tokens: "TOKEN read,write" per line')
    .option('--insecure', 'no authentication: anyone may read and write')
    .option('--tls-cert <file>', 'PEM certificate (serve wss://)')
    .option('--tls-key <file>', 'PEM key')
    .option('--upload-expiry <duration>', 'an upload untouched this long expires, its unfinished blob deleted (90s, 30m, 24h; 0: never)', durationArg)
    .option('--max-upload <size>', 'largest upload accepted over HTTP (e.g. 10GiB)', sizeArg)
    .option('--max-uploads <n>', 'uploads (tus PATCH, POST) worked on at once; more are answered 503 with Retry-After (default 32)', countArg)
    .option('--upload-stall <duration>', 'an upload body that brings nothing this long is cut, its bytes kept (default 30s; 0: no limit)', durationArg)
    .option('--max-connections <n>', 'connections open at once, WebSocket and HTTP (default 256); one more is refused with ERR_TOO_MANY_REQUESTS', countArg)
    .option('--quiet', 'no log lines')
    .action(async (o: { host: string; port: number; tokenFile?: string; insecure?: boolean; tlsCert?: string; tlsKey?: string; uploadExpiry?: number; maxUpload?: number; maxUploads?: number; uploadStall?: number; maxConnections?: number; quiet?: boolean }) => {
      if (!o.tokenFile && !o.insecure) usage('serve needs --token-file, or --insecure');
      if (!!o.tlsCert !== !!o.tlsKey) usage('--tls-cert and --tls-key go together');
      const tokens = o.tokenFile ? parseTokens(readText(o.tokenFile), o.tokenFile) : undefined;
      const tls = o.tlsCert ? { cert: readText(o.tlsCert), key: readText(o.tlsKey!) } : undefined;
      const asJson = json();
      const onEvent = o.quiet ? undefined : (e: ServeEvent) => process.stderr.write(`${logLine(e, asJson)}\n`);
      await startHashing(); // up front: the first push is no slower than later ones
      const { serve } = await lib.http();
      await withStore(false, async (s) => {
        const srv = await serve(s, {
          host: o.host,
          port: o.port,
          insecure: o.insecure,
          ...(tokens ? { tokens } : {}),
          ...(tls ? { tls } : {}),
          ...(onEvent ? { onEvent } : {}),
          ...(o.uploadExpiry !== undefined ? { uploadExpiryMs: o.uploadExpiry } : {}),
          ...(o.maxUpload !== undefined ? { maxUploadSize: o.maxUpload } : {}),
          ...(o.maxUploads !== undefined ? { maxUploads: o.maxUploads } : {}),
          ...(o.uploadStall !== undefined ? { uploadStallMs: o.uploadStall } : {}),
          ...(o.maxConnections !== undefined ? { maxConnections: o.maxConnections } : {}),
        });
        out(`serving ${srv.url}`, { url: srv.url, port: srv.port });
        // process.on, not once: our listeners stay while the server and the store close, else
        // proper-lockfile's signal-exit would re-raise the signal and end the process first.
        await new Promise<void>((resolve) => {
          process.on('SIGINT', () => resolve());
          process.on('SIGTERM', () => resolve());
        });
        await srv.close();
      });
    });
}
