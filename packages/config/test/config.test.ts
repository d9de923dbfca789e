import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkSourceRoot, ConfigError, loadConfig, MAX_UPLOAD_CHUNK_SIZE, VARIABLES } from '../src';

describe('config', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig({}, '/srv');
    assert.equal(c.redisUrl, 'redis://127.0.0.1:6379');
    assert.equal(c.port, 8080);
    assert.equal(c.sourceRoot, '/srv');
    assert.deepEqual(c.registryAllow, ['localhost', '127.0.0.1']);
    // 6 uploads at once in 8 MiB chunks (issue 14: oci-push and blob-upload-rss benches).
    assert.equal(c.uploadConcurrency, 6);
    assert.equal(c.uploadChunkSize, 8388608);
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

describe('config: token entries (FERRY_API_TOKENS, FERRY_ADMIN_TOKENS)', () => {
  it('parses bare and named entries with their scope and normalised patterns', () => {
    const c = loadConfig(
      {
        FERRY_API_TOKENS:
          'plain-token-1, ci=s3cr3t-ci@Registry.Example.com/team/*;0x7f.1:5000/x/app',
        FERRY_ADMIN_TOKENS: 'YWRtaW4tdG9rZW4=,ops=hunter-2-ops@*',
      },
      '/srv',
    );
    assert.deepEqual(
      c.tokens.map((t) => ({ name: t.name, token: t.token, scope: t.scope, patterns: t.patterns })),
      [
        { name: 'api#1', token: 'plain-token-1', scope: 'push', patterns: [] },
        {
          name: 'ci',
          token: 's3cr3t-ci',
          scope: 'push',
          patterns: ['registry.example.com/team/*', '127.0.0.1:5000/x/app'],
        },
        // a bare token may hold "=" (base64 padding)
        { name: 'admin#1', token: 'YWRtaW4tdG9rZW4=', scope: 'admin', patterns: [] },
        { name: 'ops', token: 'hunter-2-ops', scope: 'admin', patterns: ['*'] },
      ],
    );
  });

  const bad: [string, Record<string, string>, RegExp][] = [
    ['no name', { FERRY_API_TOKENS: '=hush-hush@r.example/x' }, /FERRY_API_TOKENS: entry 1/],
    ['no pattern', { FERRY_API_TOKENS: 'ci=hush-hush@' }, /FERRY_API_TOKENS: entry 1 \(ci\)/],
    [
      'a pattern without repository',
      { FERRY_ADMIN_TOKENS: 'ops=hush-hush@r.example' },
      /FERRY_ADMIN_TOKENS/,
    ],
    ['a bad host', { FERRY_API_TOKENS: 'a=hush-hush@bad host/x' }, /FERRY_API_TOKENS/],
    ['a tag in a pattern', { FERRY_API_TOKENS: 'a=hush-hush@r.example/x:1' }, /FERRY_API_TOKENS/],
    ['NAME=TOKEN without a pattern', { FERRY_ADMIN_TOKENS: 'ops=hush-hush' }, /NAME=TOKEN@\*/],
    ['an empty token', { FERRY_API_TOKENS: 'a=@r.example/x' }, /FERRY_API_TOKENS/],
    [
      'a token in both lists',
      { FERRY_API_TOKENS: 'hush-hush', FERRY_ADMIN_TOKENS: 'hush-hush' },
      /listed twice/,
    ],
    [
      'a name twice',
      { FERRY_API_TOKENS: 'a=hush-hush@r.example/x,a=other-one@r.example/y' },
      /name a/,
    ],
  ];
  for (const [what, env, msg] of bad) {
    it(`stops at start on ${what}, naming the variable and never the token`, () => {
      assert.throws(
        () => loadConfig(env, '/srv'),
        (e: Error) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.match(e.message, msg);
          assert.ok(!e.message.includes('hush-hush'), e.message);
          return true;
        },
      );
    });
  }
});

describe('config: registry host lists (FERRY_REGISTRY_ALLOW, FERRY_INSECURE_REGISTRIES)', () => {
  it('accepts host names, IPs, host:port, wildcards, bracketed and bare IPv6, and CIDRs', () => {
    const c = loadConfig(
      {
        FERRY_REGISTRY_ALLOW: 'a.example,*.corp:5000,127.1,[::1]:5000,::1,reg:*,*',
        FERRY_INSECURE_REGISTRIES: '10.0.0.0/8,fd00::/8,[fd00::]/8,localhost:5000,*.corp,0.0.0.0/0',
      },
      '/srv',
    );
    assert.equal(c.registryAllow.length, 7);
    assert.equal(c.insecureRegistries.length, 6);
  });

  const bad: [string, Record<string, string>, RegExp][] = [
    ['300.1.1.1/99', { FERRY_INSECURE_REGISTRIES: '300.1.1.1/99' }, /FERRY_INSECURE_REGISTRIES/],
    [
      'a prefix longer than the address',
      { FERRY_INSECURE_REGISTRIES: 'localhost,10.0.0.0/33' },
      /FERRY_INSECURE_REGISTRIES: "10\.0\.0\.0\/33": the prefix length must be 0-32/,
    ],
    [
      'an IPv6 prefix over 128',
      { FERRY_INSECURE_REGISTRIES: 'fd00::/129' },
      /FERRY_INSECURE_REGISTRIES: "fd00::\/129"/,
    ],
    ['a CIDR of a name', { FERRY_INSECURE_REGISTRIES: 'corp/8' }, /"corp" is not an IPv4/],
    ['an insecure host with a bad port', { FERRY_INSECURE_REGISTRIES: 'reg:0' }, /"reg:0"/],
    ['an allow entry with a scheme', { FERRY_REGISTRY_ALLOW: 'https://reg.example' }, /scheme/],
    ['an allow entry with a path', { FERRY_REGISTRY_ALLOW: 'reg.example/team' }, /"\/"/],
    ['an allow entry with userinfo', { FERRY_REGISTRY_ALLOW: 'user@reg.example' }, /"@"/],
    ['an allow entry with a bad port', { FERRY_REGISTRY_ALLOW: 'reg.example:99999' }, /99999/],
    ['an allow entry with a port of letters', { FERRY_REGISTRY_ALLOW: 'reg:http' }, /"reg:http"/],
    ['an allow entry no IP can be', { FERRY_REGISTRY_ALLOW: '300.1.1.1' }, /"300\.1\.1\.1"/],
    ['an allow entry with spaces', { FERRY_REGISTRY_ALLOW: 'reg example' }, /spaces/],
  ];
  for (const [what, env, msg] of bad) {
    it(`stops at start on ${what}, naming the variable`, () => {
      assert.throws(
        () => loadConfig(env, '/srv'),
        (e: Error) => {
          assert.ok(e instanceof ConfigError, String(e));
          const variable = Object.keys(env)[0];
          assert.deepEqual(
            e.problems.map((p) => p.variable),
            [variable],
          );
          assert.match(e.message, msg);
          return true;
        },
      );
    });
  }
});

describe('config: checkSourceRoot (the roles that read sources call it at start)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-config-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts a directory', () => {
    checkSourceRoot(loadConfig({ FERRY_SOURCE_ROOT: dir }, '/srv'));
  });

  it('refuses a root that does not exist or is a file, naming FERRY_SOURCE_ROOT', () => {
    const file = join(dir, 'file');
    writeFileSync(file, 'x');
    for (const [root, msg] of [
      [join(dir, 'missing'), /does not exist/],
      [file, /is not a directory/],
      [join(file, 'below'), /does not exist/],
    ] as const) {
      // loadConfig itself does not look at the filesystem (the CLI's client commands need no root)
      const config = loadConfig({ FERRY_SOURCE_ROOT: root }, '/srv');
      assert.throws(
        () => checkSourceRoot(config),
        (e: Error) => {
          assert.ok(e instanceof ConfigError, String(e));
          assert.deepEqual(
            e.problems.map((p) => p.variable),
            ['FERRY_SOURCE_ROOT'],
          );
          assert.match(e.message, /^invalid configuration: FERRY_SOURCE_ROOT: /);
          assert.match(e.message, msg);
          return true;
        },
      );
    }
  });
});

describe('config: Redis beyond one node (FERRY_REDIS_CLUSTER, FERRY_REDIS_SENTINELS)', () => {
  /** The variables a ConfigError names for env. */
  function problems(env: Record<string, string>): string[] {
    try {
      loadConfig(env, '/srv');
    } catch (e) {
      assert.ok(e instanceof ConfigError, String(e));
      return e.problems.map((p) => p.variable);
    }
    assert.fail('expected a ConfigError');
  }

  it('defaults to one node at FERRY_REDIS_URL', () => {
    assert.deepEqual(loadConfig({}, '/srv').redis, {
      mode: 'standalone',
      url: 'redis://127.0.0.1:6379',
    });
    assert.deepEqual(loadConfig({ FERRY_REDIS_URL: 'rediss://r.example:6380' }, '/srv').redis, {
      mode: 'standalone',
      url: 'rediss://r.example:6380',
    });
  });

  it('reads a cluster seed list (host:port, IPv6 in brackets, port 6379 when left out)', () => {
    const c = loadConfig(
      { FERRY_REDIS_CLUSTER: '10.0.0.1:7000, redis-1.corp:7001 ,[fd00::1]:7002,redis-2' },
      '/srv',
    );
    assert.deepEqual(c.redis, {
      mode: 'cluster',
      nodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: 'redis-1.corp', port: 7001 },
        { host: 'fd00::1', port: 7002 },
        { host: 'redis-2', port: 6379 },
      ],
    });
  });

  it('reads Sentinels and the master name (port 26379 when left out)', () => {
    const c = loadConfig(
      { FERRY_REDIS_SENTINELS: 's1:26380,s2', FERRY_REDIS_SENTINEL_NAME: 'ferry-master' },
      '/srv',
    );
    assert.deepEqual(c.redis, {
      mode: 'sentinel',
      sentinels: [
        { host: 's1', port: 26380 },
        { host: 's2', port: 26379 },
      ],
      name: 'ferry-master',
    });
  });

  it('stops at start when more than one of URL, cluster and Sentinels is set, naming each', () => {
    assert.deepEqual(problems({ FERRY_REDIS_URL: 'redis://a', FERRY_REDIS_CLUSTER: 'b:1' }), [
      'FERRY_REDIS_URL',
      'FERRY_REDIS_CLUSTER',
    ]);
    assert.deepEqual(
      problems({
        FERRY_REDIS_CLUSTER: 'b:1',
        FERRY_REDIS_SENTINELS: 'c:2',
        FERRY_REDIS_SENTINEL_NAME: 'm',
      }),
      ['FERRY_REDIS_CLUSTER', 'FERRY_REDIS_SENTINELS'],
    );
  });

  it('stops at start on a Sentinel list without a name, or a name without Sentinels', () => {
    assert.deepEqual(problems({ FERRY_REDIS_SENTINELS: 's1:26379' }), [
      'FERRY_REDIS_SENTINEL_NAME',
    ]);
    assert.deepEqual(problems({ FERRY_REDIS_SENTINEL_NAME: 'm' }), ['FERRY_REDIS_SENTINEL_NAME']);
    assert.deepEqual(
      problems({ FERRY_REDIS_SENTINELS: 's1', FERRY_REDIS_SENTINEL_NAME: 'two words' }),
      ['FERRY_REDIS_SENTINEL_NAME'],
    );
  });

  for (const bad of [
    'redis://a:7000',
    'a:port',
    'a:0',
    'a:65536',
    ':7000',
    '[not-v6]:7000',
    'a b:7000',
    'a:7000:1',
    ' , ',
  ]) {
    it(`stops at start on FERRY_REDIS_CLUSTER=${JSON.stringify(bad)}, naming the variable`, () => {
      assert.deepEqual(problems({ FERRY_REDIS_CLUSTER: bad }), ['FERRY_REDIS_CLUSTER']);
      assert.deepEqual(problems({ FERRY_REDIS_SENTINELS: bad, FERRY_REDIS_SENTINEL_NAME: 'm' }), [
        'FERRY_REDIS_SENTINELS',
      ]);
    });
  }

  it('refuses a FERRY_QUEUE_PREFIX without a {hash tag} when FERRY_REDIS_CLUSTER is set', () => {
    for (const prefix of ['ferry', 'fer{}ry', '{ferry', 'ferry}']) {
      assert.deepEqual(problems({ FERRY_REDIS_CLUSTER: 'a:7000', FERRY_QUEUE_PREFIX: prefix }), [
        'FERRY_QUEUE_PREFIX',
      ]);
      // One node or Sentinel: any prefix without ":" does.
      assert.equal(loadConfig({ FERRY_QUEUE_PREFIX: prefix }, '/srv').queuePrefix, prefix);
    }
    for (const prefix of ['{ferry}', 'team{ferry}', '{a}b']) {
      const c = loadConfig({ FERRY_REDIS_CLUSTER: 'a:7000', FERRY_QUEUE_PREFIX: prefix }, '/srv');
      assert.equal(c.queuePrefix, prefix);
    }
  });

  it('lists the new variables in VARIABLES', () => {
    for (const v of ['FERRY_REDIS_CLUSTER', 'FERRY_REDIS_SENTINELS', 'FERRY_REDIS_SENTINEL_NAME']) {
      assert.ok((VARIABLES as readonly string[]).includes(v), v);
    }
  });
});
