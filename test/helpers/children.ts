import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const GC_CHILD = fileURLToPath(new URL('./gc-child.js', import.meta.url));

/** Runs helpers/gc-child.js with `args` to its end: its exit code and stdout. */
export function runGcChild(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [GC_CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.on('exit', (code) => resolve({ code, out }));
  });
}
