import assert from 'node:assert/strict';
import { Keys, hashTag, keySlot } from '@ferry/queue';

describe('@ferry/queue keys: hash tags and Redis Cluster slots', () => {
  it('reads the hash tag as Redis Cluster does (first "{", next "}", not empty)', () => {
    assert.equal(hashTag('{ferry}:push:1'), 'ferry');
    assert.equal(hashTag('team{ferry}:x'), 'ferry');
    assert.equal(hashTag('{}{ferry}'), undefined);
    assert.equal(hashTag('{ferry'), undefined);
    assert.equal(hashTag('ferry}'), undefined);
    assert.equal(hashTag('{a}{b}'), 'a');
  });

  it('computes the slots redis-server answers to CLUSTER KEYSLOT', () => {
    // Values from the Redis Cluster specification and redis-server 7.0's CLUSTER KEYSLOT.
    assert.equal(keySlot('foo'), 12182);
    assert.equal(keySlot('123456789'), 12739);
    assert.equal(keySlot('{user1000}.following'), keySlot('{user1000}.followers'));
    // An empty first tag means no tag: the whole key is hashed, not "bar".
    assert.notEqual(keySlot('foo{}{bar}'), keySlot('bar'));
  });

  it("puts every key Ferry names under a tagged prefix in the prefix's slot", () => {
    const k = new Keys('{ferry}');
    const slot = keySlot('{ferry}');
    for (const key of [
      k.push('p'),
      k.events('p'),
      k.index('all'),
      k.idempotency('key'),
      k.metrics(),
      k.semaphore('lookup', 'registry.example:5000'),
      k.lease('registry.example/sha256:abc'),
      k.leaseToken('registry.example/sha256:abc'),
      k.uploadSession('lease', 'team/app'),
      k.blobRepos('registry.example', 'sha256:abc'),
      k.compressed('sha256:def', 6, '1.2.13'),
    ]) {
      assert.equal(keySlot(key), slot, key);
    }
  });
});
