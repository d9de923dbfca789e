/** Helpers for tests of file capabilities in dir: layers. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';

export const SETCAP = '/usr/sbin/setcap';

/** Under CI=true a missing setcap fails the test; elsewhere it skips. */
export function requireSetcap(ctx: Mocha.Context): void {
  if (existsSync(SETCAP)) return;
  if (process.env.CI === 'true') assert.fail(`${SETCAP} is missing (apt-get install libcap2-bin)`);
  ctx.skip();
}

/** The value bytes of the PAX record `key` in a tar (raw: capabilities are binary). */
export function paxValue(tar: Buffer, key: string): Buffer | undefined {
  const needle = Buffer.from(` ${key}=`);
  const at = tar.indexOf(needle);
  if (at < 0) return undefined;
  let start = at;
  while (start > 0 && tar[start - 1]! >= 0x30 && tar[start - 1]! <= 0x39) start--;
  const len = Number(tar.subarray(start, at).toString('ascii'));
  return tar.subarray(at + needle.length, start + len - 1);
}

export async function capabilityOf(path: string): Promise<Buffer> {
  const { getAttribute } = (await import('fs-xattr')) as {
    getAttribute: (p: string, a: string) => Promise<Buffer>;
  };
  return getAttribute(path, 'security.capability');
}
