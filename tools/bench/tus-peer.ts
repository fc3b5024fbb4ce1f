// The http case's peer, run as a child process: @tus/server with its own
// @tus/file-store at /files/ (uploads into DIR), and GET /plain piping
// fs.createReadStream(FILE) to the response. Prints "port N" once listening;
// ends on SIGTERM. Usage: node tus-peer.js DIR FILE
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server as TusServer } from '@tus/server';
import { FileStore } from '@tus/file-store';

const [dir, file] = process.argv.slice(2) as [string, string];
const size = fs.statSync(file).size;
const tus = new TusServer({ path: '/files', datastore: new FileStore({ directory: dir }) });
const server = http.createServer((req, res) => {
  if (req.url?.startsWith('/plain')) {
    res.writeHead(200, { 'content-length': size, 'content-type': 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  } else void tus.handle(req, res);
});
server.requestTimeout = 0;
server.listen(0, '127.0.0.1', () => console.log(`port ${(server.address() as AddressInfo).port}`));
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
