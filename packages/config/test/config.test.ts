import assert from 'node:assert/strict';
import { ConfigError, loadConfig, MAX_UPLOAD_CHUNK_SIZE } from '../src';

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

  it('caps FERRY_UPLOAD_CHUNK_SIZE at 512 MiB, the chunk an upload keeps in memory', () => {
    assert.equal(MAX_UPLOAD_CHUNK_SIZE, 512 * 1024 * 1024);
    const ok = loadConfig({ FERRY_UPLOAD_CHUNK_SIZE: String(MAX_UPLOAD_CHUNK_SIZE) }, '/srv');
    assert.equal(ok.uploadChunkSize, MAX_UPLOAD_CHUNK_SIZE);
    assert.throws(
      () => loadConfig({ FERRY_UPLOAD_CHUNK_SIZE: String(MAX_UPLOAD_CHUNK_SIZE + 1) }, '/srv'),
      (e: Error) =>
        e instanceof ConfigError &&
        /FERRY_UPLOAD_CHUNK_SIZE/.test(e.message) &&
        /536870912/.test(e.message),
    );
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
