import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { createLogger, redact, redactString } from '../src';

describe('log redaction', () => {
  it('redacts secret-named keys at any depth', () => {
    const out = redact({ headers: { Authorization: 'Bearer abc', accept: 'x' }, password: 'p' });
    assert.deepEqual(out, {
      headers: { Authorization: '[REDACTED]', accept: 'x' },
      password: '[REDACTED]',
    });
  });

  it('redacts credentials inside free text', () => {
    assert.equal(redactString('got Bearer eyJhbGciOi.x.y back'), 'got Bearer [REDACTED] back');
    assert.equal(
      redactString('https://bob:hunter2@r.example/v2/'),
      'https://[REDACTED]@r.example/v2/',
    );
    assert.equal(redactString('/token?access_token=abc&x=1'), '/token?access_token=[REDACTED]&x=1');
  });

  it('never writes a secret to the log stream', async () => {
    const stream = new PassThrough();
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    const log = createLogger({ format: 'json', stream, level: 'info' });
    log.info('auth failed with Basic Ym9iOmh1bnRlcjI=', { token: 's3cret', registry: 'r.example' });
    log.error(new Error('request to https://u:pw@h/ failed'));
    await new Promise((r) => setTimeout(r, 20));
    const text = Buffer.concat(chunks).toString();
    assert.ok(text.includes('r.example'));
    assert.ok(!text.includes('s3cret'));
    assert.ok(!text.includes('Ym9iOmh1bnRlcjI='));
    assert.ok(!text.includes(':pw@'));
  });
});
