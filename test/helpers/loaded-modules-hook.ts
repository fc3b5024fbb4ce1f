// The load hook of loaded-modules.ts: notes each ES module's URL as it loads.
import fs from 'node:fs';

type Next = (url: string, context: unknown) => Promise<unknown>;

export async function load(url: string, context: unknown, next: Next): Promise<unknown> {
  fs.appendFileSync(process.env.CABSTORE_TEST_LOADED!, `${url}\n`);
  return next(url, context);
}
