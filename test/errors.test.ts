import test from 'ava';
import fs from 'node:fs';
import { ERROR_CODES, CabError, isCabError } from '../src/index.js';

test('every error code is documented in the README', (t) => {
  const readme = fs.readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  for (const code of Object.keys(ERROR_CODES)) t.true(readme.includes(`\`${code}\``), `${code} is missing from README.md`);
});

test('CabError carries its code, data and cause', (t) => {
  const cause = new Error('low level');
  const e = new CabError('ERR_NO_SUCH_BLOB', 'no blob x', { blob: 'x' }, { cause });
  t.is(e.code, 'ERR_NO_SUCH_BLOB');
  t.is(e.data.blob, 'x');
  t.is(e.cause, cause);
  t.true(isCabError(e, 'ERR_NO_SUCH_BLOB'));
  t.false(isCabError(e, 'ERR_CLOSED'));
  t.false(isCabError(cause));
  t.regex(e.message, /^ERR_NO_SUCH_BLOB: /);
});
