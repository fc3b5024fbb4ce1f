// The built CLI (dist/tools/cli.js) run in a child process, as a user runs it.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../tools/cli.js', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `cabstore --store STORE ARGS...` to its end. */
export function runCli(store: string, ...args: string[]): Promise<CliResult> {
  const env = { ...process.env };
  delete env.CABSTORE_DIR;
  delete env.CABSTORE_TOKEN;
  const c = spawn(process.execPath, [CLI, '--store', store, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
