import assert from 'node:assert/strict';
import { UnrecoverableError } from 'bullmq';
import { SemaphoreTimeoutError } from '@ferry/queue';
import { RegistryError } from '@ferry/registry-client';
import { CancelledError, errorInfo, isPermanent, PermanentError } from '../src';

describe('runtime: error classification for BullMQ', () => {
  it('retries what may heal and stops on what cannot', () => {
    const cases: [unknown, boolean][] = [
      [new RegistryError('FERRY_REGISTRY_UNAVAILABLE', '503'), false],
      [new RegistryError('FERRY_RATE_LIMITED', '429'), false],
      [new RegistryError('FERRY_UPLOAD_SESSION_LOST', 'gone'), false],
      [new RegistryError('FERRY_REGISTRY_DENIED', '403'), true],
      [new RegistryError('FERRY_DIGEST_MISMATCH', 'bad'), true],
      [new SemaphoreTimeoutError('lookup', 'r:5000', 10), false],
      [Object.assign(new Error('tampered'), { code: 'FERRY_BLOB_DIGEST_MISMATCH' }), true],
      [new PermanentError('FERRY_SOURCE_CHANGED', 'changed'), true],
      [new CancelledError('p1'), true],
      [new UnrecoverableError('x'), true],
      [new Error('ECONNRESET'), false],
    ];
    for (const [err, permanent] of cases) {
      assert.equal(isPermanent(err), permanent, `${(err as Error).message}`);
    }
  });

  it('reports stable codes, FERRY_INTERNAL for anything else', () => {
    assert.deepEqual(errorInfo(new PermanentError('FERRY_LAYER_MISSING', 'no blob')), {
      code: 'FERRY_LAYER_MISSING',
      message: 'no blob',
    });
    assert.equal(errorInfo(new CancelledError('p1', 'failed')).code, 'FERRY_PUSH_ENDED');
    assert.equal(errorInfo(new TypeError('oops')).code, 'FERRY_INTERNAL');
  });
});
