// The cabstore command line. Exit codes: 0 success, 1 failure (a line naming
// the CabError code, the last on stderr), 2 bad usage (what is wrong, then the
// command's help). Stopped by SIGINT or SIGTERM, put and resume clean up and
// then die of that signal (the shell shows 130 or 143).
// The commands live in tools/cli/, by job; each loads the parts of the
// library it needs when it runs (cli/context.ts, lib), so that --help and
// --version load none.
import fs from 'node:fs';
import v8 from 'node:v8';
import { CommanderError } from 'commander';
import { ioError, isCabError } from '../src/errors.js';
import { Interrupted, program, usageHelp } from './cli/context.js';
import { writeCommands } from './cli/write.js';
import { blobCommands } from './cli/blobs.js';
import { upkeepCommands } from './cli/upkeep.js';
import { serveCommand } from './cli/serve.js';
import { transferCommands } from './cli/transfer.js';
import { signpostCommand } from './cli/signpost.js';

/** The package's own version, from the package.json two levels above dist/tools/. */
const VERSION = (JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

// V8 starts incremental marking from a task whenever a heap nears its soft limit, and a heap as small as this
// process's (about 12 MB) stays near it while a pull or a serve moves hundreds of MB through short-lived buffers:
// 52-71 full collections per 512 MiB pulled, against 4-16 without the task (marking then starts at the
// allocation limit), and the pull's CPU 7.6-8.2 s per GiB against 5.9-6.4 (docs/BENCHMARKS.md, sixth session).
// V8 compiles a function with TurboFan (on helper threads) once it has run about 66 KB of bytecode
// (--interrupt-budget), and a one-shot command's functions mostly get there just before the process ends: a
// CLI pull of a 64 MiB update spent ~120 ms of CPU compiling code it then hardly ran (0.53 s of CPU for a
// 0.40 s pull, on 2 cores shared with the server). With 16 times the budget: 0.41 s of CPU, 0.35 s wall; the
// hot loops of a long pull or of a server are optimized a moment later (docs/BENCHMARKS.md, tenth session).
// The process is the CLI's own; the library leaves V8's flags to the application that embeds it.
v8.setFlagsFromString('--no-incremental-marking-task');
v8.setFlagsFromString('--interrupt-budget=1048576');

// The AWS SDK warns once (8 lines) that its releases of 2027 will not support Node 20. A store
// opened on a bucket, with --s3 or remembered, would print it on every command; the CLI's stderr
// is the user's, and the library leaves the choice to its embedder.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

// A reader that goes away (`cabstore cat X | head`) is the end of the output, as for cat: exit 0, quietly.
// Any other failure to write it (`> /dev/full`: ENOSPC, EIO) is the command's failure: its code, exit 1.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  process.stderr.write(`cabstore: ${ioError(e, 'writing to stdout').message}\n`);
  process.exit(1);
});

program
  .name('cabstore')
  .version(VERSION, '-V, --version', 'print the version')
  .description(
    'A content-addressed blob store with rsync-like transfer.\n' +
      'The store is --store DIR, else $CABSTORE_DIR, else ./.cabstore.\n' +
      'Only init, put, pull and import make one, in a new or empty directory.',
  )
  .option('--store <dir>', 'the store directory')
  .option('--s3 <url>', 'keep the fragments in an S3 bucket, s3://bucket/prefix, shared with the stores on it (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); remembered by the store')
  .option('--s3-endpoint <url>', 'the S3 endpoint for --s3 (default $CABSTORE_S3_ENDPOINT)')
  .option('--json', 'print results as JSON')
  .exitOverride()
  .configureHelp({ showGlobalOptions: true }) // every command's help shows --store and --json
  .configureOutput({ outputError: () => {} });

writeCommands(program);
blobCommands(program);
upkeepCommands(program);
serveCommand(program);
transferCommands(program);
signpostCommand(program);

// No top-level await: the bundle is CommonJS-shaped, for a V8 code cache (tools/launch.ts).
void (async () => {
  try {
    // Bare `cabstore` is bad usage: say how to use it, exit 2.
    if (process.argv.length <= 2) throw new CommanderError(2, 'cabstore.usage', 'error: a command is needed');
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') process.exit(0);
      // What is wrong first, then the help of the command it concerns.
      process.stderr.write(`cabstore: ${e.message.replace(/^error: /, '')}\n\n${usageHelp()}`);
      process.exit(2);
    }
    if (e instanceof Interrupted) {
      if (e.message) process.stderr.write(`cabstore: ${e.message}\n`);
      // Having cleaned up, die of the signal itself, as a program that catches SIGINT should: the shell sees
      // 130 (SIGINT) or 143 (SIGTERM), and a script running us stops too. process.exit would also wait
      // forever for a read of a FIFO that nobody writes to (Node joins its I/O threads at exit).
      process.removeAllListeners(e.signal);
      process.kill(process.pid, e.signal);
    }
    if (isCabError(e)) {
      process.stderr.write(`cabstore: ${e.message.split('\n')[0]}\n`);
      process.exit(1);
    }
    // An errno error that escaped its own wrapping is still an I/O failure, and says so by its code.
    const errno = typeof (e as NodeJS.ErrnoException)?.errno === 'number';
    process.stderr.write(`cabstore: ${errno ? 'ERR_IO: ' : ''}${(e as Error).message ?? String(e)}\n`);
    process.exit(1);
  }
})();
