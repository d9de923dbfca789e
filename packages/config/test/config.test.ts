import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../src';

describe('config', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig({}, '/srv');
    assert.equal(c.redisUrl, 'redis://127.0.0.1:6379');
    assert.equal(c.port, 8080);
    assert.equal(c.sourceRoot, '/srv');
    assert.deepEqual(c.registryAllow, ['localhost', '127.0.0.1']);
    assert.equal(c.uploadChunkSize, 33554432);
    assert.equal(c.queuePrefix, '{ferry}');
    assert.ok(Object.isFrozen(c));
  });

  it('parses lists and numbers', () => {
    const c = loadConfig(
      { FERRY_REGISTRY_ALLOW: 'a.example, *.corp:5000', FERRY_PORT: '9000', FERRY_GZIP_LEVEL: '1' },
      '/srv',
    );
    assert.deepEqual(c.registryAllow, ['a.example', '*.corp:5000']);
    assert.equal(c.port, 9000);
    assert.equal(c.gzipLevel, 1);
  });

  it('names every bad variable at once', () => {
    try {
      loadConfig({ FERRY_PORT: 'eighty', FERRY_GZIP_LEVEL: '12', FERRY_REDIS_URL: 'http://x' });
      assert.fail('expected ConfigError');
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      const vars = e.problems.map((p) => p.variable).sort();
      assert.deepEqual(vars, ['FERRY_GZIP_LEVEL', 'FERRY_PORT', 'FERRY_REDIS_URL']);
      assert.match(e.message, /FERRY_PORT: expected an integer/);
    }
  });
});
