// What the user gives the CLI, checked: numbers of options, and the
// server's token file. Anything malformed is bad usage (exit 2).
import { CommanderError, InvalidArgumentError } from 'commander';
import type { Perm } from '../src/index.js';
import { parseSize } from './size.js';

/** Bad usage: the CLI prints the message and the help, and exits 2. */
export function usage(msg: string): never {
  throw new CommanderError(2, 'cabstore.usage', msg);
}

/** For `--port`: an integer in 0..65535. */
export function portArg(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) > 65535) throw new InvalidArgumentError('a port is an integer in 0..65535.');
  return Number(text);
}

/** For counts: a whole number >= 1. */
export function countArg(text: string): number {
  if (!/^\d{1,15}$/.test(text) || Number(text) < 1) throw new InvalidArgumentError('a count is a whole number of at least 1.');
  return Number(text);
}

/** For size options: "64KiB", "1GiB", "4096". */
export function sizeArg(text: string): number {
  try {
    return parseSize(text);
  } catch (e) {
    throw new InvalidArgumentError(`${(e as Error).message.replace(/^ERR_BAD_ARGUMENT: /, '')}.`);
  }
}

/** For `--range`: "START-END" (bytes, END exclusive, END >= START) or "START-" (to the end). */
export function rangeArg(text: string): { start: number; end?: number } {
  const m = /^(\d+)-(\d*)$/.exec(text);
  const start = m ? Number(m[1]) : NaN;
  const end = m && m[2] !== '' ? Number(m[2]) : undefined;
  if (!m || !Number.isSafeInteger(start) || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
    throw new InvalidArgumentError('a range is START-END (bytes, END exclusive, END >= START) or START- (to the end).');
  }
  return end === undefined ? { start } : { start, end };
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** For durations: "500ms", "90s", "30m", "24h", "7d", or "0" (never). */
export function durationArg(text: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text.trim());
  if (text.trim() === '0') return 0;
  const ms = m ? Number(m[1]) * UNIT_MS[m[2]!]! : NaN;
  if (!Number.isSafeInteger(ms)) throw new InvalidArgumentError('a duration is a whole number with a unit: 500ms, 90s, 30m, 24h, 7d (or 0).');
  return ms;
}

/**
 * A token line: the token (no spaces, no commas: "tok,read" must not read as
 * a token with both permissions), then nothing (both permissions), one
 * permission, or two separated by a comma, spaces, or both.
 */
const LINE = /^([^\s,]+)(?:\s+(read|write)(?:(?:\s*,\s*|\s+)(read|write))?)?$/;

/**
 * The server's token file: one token a line, then its permissions ("read
 * write", "read,write", "read, write", "read"); a token alone has both.
 * Blank lines and lines starting with # are skipped. Anything else is bad
 * usage, naming the line: a typo must not quietly mean fewer permissions.
 */
export function parseTokens(text: string, file: string): Map<string, Perm[]> {
  const tokens = new Map<string, Perm[]>();
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) {
      usage(`${file}:${i + 1}: expected "TOKEN", "TOKEN read", "TOKEN write" or "TOKEN read write" (or "read,write"; a token has no spaces or commas), not ${JSON.stringify(line.replace(/^\S+/, 'TOKEN'))}`);
    }
    const perms = m[2] === undefined ? ['read', 'write'] : [...new Set([m[2], m[3]].filter((p) => p !== undefined))];
    tokens.set(m[1]!, perms as Perm[]);
  }
  if (tokens.size === 0) usage(`${file} holds no token`);
  return tokens;
}
