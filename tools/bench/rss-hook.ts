// Loaded with `node --import` into a CLI child of the bench: when the
// process exits, writes its peak RSS in bytes to the file that
// $CABSTORE_BENCH_RSS names, so the bench reports the client's peak beside
// the server's (Node cannot read a finished child's rusage).
import fs from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const file = process.env.CABSTORE_BENCH_RSS;
if (file && isMainThread) process.on('exit', () => fs.writeFileSync(file, String(process.resourceUsage().maxRSS * 1024)));
