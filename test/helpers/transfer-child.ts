// A cabstore server in its own process, for tests that SIGKILL it.
// Usage: node transfer-child.js STORE PORT TOKEN
//   opens STORE, serves it on 127.0.0.1:PORT (0: any) to TOKEN with read and
//   write, prints "url <ws url>", and serves until killed.
import { BlobStore, serve } from '../../src/index.js';

const [root, port, token] = process.argv.slice(2);
const store = await BlobStore.open(root!);
const server = await serve(store, { tokens: { [token!]: ['read', 'write'] }, port: Number(port) });
console.log(`url ${server.url}`);
process.on('SIGTERM', () => {
  void server
    .close()
    .then(() => store.close())
    .then(() => process.exit(0));
});
