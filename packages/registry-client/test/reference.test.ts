import assert from 'node:assert/strict';
import {
  isAllowed,
  isInsecure,
  normalizeHost,
  parseChallenges,
  parseRangeEnd,
  parseReference,
  parseRetryAfter,
  RegistryError,
  isTransient,
  errorFromResponse,
  classifyError,
} from '@ferry/registry-client';

describe('parseReference', () => {
  const good: [string, string, string, string | undefined, string | undefined][] = [
    ['busybox', 'docker.io', 'library/busybox', undefined, undefined],
    ['busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined],
    ['index.docker.io/busybox', 'docker.io', 'library/busybox', undefined, undefined],
    ['docker.io/team/app:v1', 'docker.io', 'team/app', 'v1', undefined],
    ['team/app', 'docker.io', 'team/app', undefined, undefined],
    ['localhost/app', 'localhost', 'app', undefined, undefined],
    ['localhost:5000/a/b/c:tag_1.0-x', 'localhost:5000', 'a/b/c', 'tag_1.0-x', undefined],
    ['127.0.0.1:5000/x', '127.0.0.1:5000', 'x', undefined, undefined],
    ['[::1]:5000/x:y', '[::1]:5000', 'x', 'y', undefined],
    [
      'registry.example.com/a__b/c.d/e-f--g',
      'registry.example.com',
      'a__b/c.d/e-f--g',
      undefined,
      undefined,
    ],
    ['Example.COM/app', 'Example.COM', 'app', undefined, undefined],
    [
      'reg.example.com/app:1@sha256:' + 'a'.repeat(64),
      'reg.example.com',
      'app',
      '1',
      'sha256:' + 'a'.repeat(64),
    ],
    [
      'reg.example.com/app@sha256:' + 'b'.repeat(64),
      'reg.example.com',
      'app',
      undefined,
      'sha256:' + 'b'.repeat(64),
    ],
  ];
  for (const [input, registry, repository, tag, digest] of good) {
    it(`parses ${input}`, () => {
      const r = parseReference(input);
      assert.equal(r.registry, registry);
      assert.equal(r.repository, repository);
      assert.equal(r.tag, tag);
      assert.equal(r.digest, digest);
    });
  }

  it('prints the normalised form', () => {
    assert.equal(parseReference('busybox:1').toString(), 'docker.io/library/busybox:1');
    assert.equal(parseReference('127.0.0.1:5000/a/b:t').toString(), '127.0.0.1:5000/a/b:t');
  });

  const bad: [string, RegExp][] = [
    ['', /reference is empty/],
    ['UPPER', /must be lowercase/],
    ['reg.example.com/App', /must be lowercase/],
    ['docker.io/Team/app', /must be lowercase/],
    ['reg.example.com/', /missing repository name/],
    ['reg.example.com/app:', /empty tag/],
    ['reg.example.com/app:-bad', /tag "-bad"/],
    ['reg.example.com/app:' + 'x'.repeat(129), /more than 128/],
    ['reg.example.com/a//b', /empty path component/],
    ['reg.example.com/a_-b', /path component "a_-b"/],
    ['reg.example.com/app@sha256:abc', /64 lower-case hex/],
    ['reg.example.com/app@md5', /is not ALGORITHM:HEX/],
    ['reg.example.com:99999/app', /port "99999"/],
    ['reg.example.com:port/app', /port "port"/],
    ['-reg.example.com/app', /"-reg" is not a valid host name component/],
    ['https://reg.example.com/app', /no scheme/],
    ['reg.example.com/a pp', /white space/],
    ['reg.example.com/' + 'a'.repeat(256), /more than 255/],
  ];
  for (const [input, msg] of bad) {
    it(`rejects ${JSON.stringify(input.length > 40 ? input.slice(0, 40) + '…' : input)}`, () => {
      assert.throws(
        () => parseReference(input),
        (e: unknown) => {
          assert.ok(e instanceof RegistryError);
          assert.equal(e.code, 'FERRY_BAD_REFERENCE');
          assert.match(e.message, msg);
          assert.equal(e.transient, false);
          return true;
        },
      );
    });
  }
});

describe('allowlist and insecure hosts', () => {
  it('normalises IP literals, case and keeps ports as written', () => {
    assert.equal(normalizeHost('127.1'), '127.0.0.1');
    assert.equal(normalizeHost('127.1:5000'), '127.0.0.1:5000');
    assert.equal(normalizeHost('0x7f.0.0.1:80'), '127.0.0.1:80');
    assert.equal(normalizeHost('[0:0::1]:443'), '[::1]:443');
    assert.equal(normalizeHost('::1'), '[::1]');
    assert.equal(normalizeHost('Registry.Example.COM:443'), 'registry.example.com:443');
    assert.throws(() => normalizeHost('a/b'), /invalid registry host "a\/b"/);
    assert.throws(() => normalizeHost('host:0'), /port 0 is out of range/);
  });

  it('matches entries with and without ports and wildcards', () => {
    const allow = ['127.0.0.1', 'localhost:5000', '*.example.com', 'reg.test:*'];
    assert.equal(isAllowed('127.1:38000', allow), true, '127.1 is 127.0.0.1');
    assert.equal(isAllowed('127.0.0.2:38000', allow), false);
    assert.equal(isAllowed('localhost:5000', allow), true);
    assert.equal(isAllowed('LOCALHOST:5000', allow), true);
    assert.equal(isAllowed('localhost:5001', allow), false, 'port given in the entry must match');
    assert.equal(isAllowed('a.example.com', allow), true);
    assert.equal(isAllowed('example.com', allow), false);
    assert.equal(isAllowed('evil-example.com', allow), false);
    assert.equal(isAllowed('reg.test:1234', allow), true);
    assert.equal(isAllowed('[::1]:5000', allow), false);
    assert.equal(isAllowed('[::1]:5000', ['::1']), true);
    assert.equal(isAllowed('anything', []), false);
    assert.equal(isAllowed('not a host', ['*']), false);
  });

  it('treats names, IPs and CIDRs as insecure', () => {
    const insecure = ['localhost', '127.0.0.0/8', 'plain.test:8080', '[::1]'];
    assert.equal(isInsecure('127.0.0.1:5000', insecure), true);
    assert.equal(isInsecure('127.200.1.1', insecure), true);
    assert.equal(isInsecure('127.1:5000', insecure), true);
    assert.equal(isInsecure('128.0.0.1', insecure), false);
    assert.equal(isInsecure('localhost:1234', insecure), true);
    assert.equal(isInsecure('plain.test:8080', insecure), true);
    assert.equal(isInsecure('plain.test:8443', insecure), false);
    assert.equal(isInsecure('[::1]:5000', insecure), true);
    assert.equal(isInsecure('registry.example.com', insecure), false);
  });
});

describe('protocol helpers', () => {
  it('parses WWW-Authenticate challenges', () => {
    const [b] = parseChallenges(
      'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"',
    );
    assert.equal(b!.scheme, 'bearer');
    assert.equal(b!.params.realm, 'https://auth.example.com/token');
    assert.equal(b!.params.service, 'registry.example.com');
    assert.equal(b!.params.scope, 'repository:a/b:pull,push');
    const two = parseChallenges('Basic realm="Registry Realm", Bearer realm="https://x/t"');
    assert.deepEqual(
      two.map((c) => c.scheme),
      ['basic', 'bearer'],
    );
    assert.equal(two[0]!.params.realm, 'Registry Realm');
  });

  it('parses Retry-After and Range', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:05 GMT', now), 5000);
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(parseRangeEnd('0-1023'), 1024);
    assert.equal(parseRangeEnd('0-0'), 0);
    assert.equal(parseRangeEnd('bytes=0-9'), 10);
    assert.equal(parseRangeEnd('5-9'), undefined);
  });

  it('decides transient vs permanent in one table', () => {
    assert.equal(isTransient('FERRY_REGISTRY_UNAVAILABLE'), true);
    assert.equal(isTransient('FERRY_RATE_LIMITED'), true);
    assert.equal(isTransient('FERRY_DIGEST_MISMATCH'), false);
    assert.equal(isTransient('FERRY_REGISTRY_UNAUTHORIZED'), false);
    const e503 = errorFromResponse(503, '', { what: 'x' });
    assert.equal(e503.code, 'FERRY_REGISTRY_UNAVAILABLE');
    assert.equal(e503.transient, true);
    const e404 = errorFromResponse(
      404,
      '{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}',
      {
        what: 'HEAD',
      },
    );
    assert.equal(e404.code, 'FERRY_REPOSITORY_NOT_FOUND');
    assert.equal(e404.errors?.[0]?.code, 'NAME_UNKNOWN');
    assert.match(e404.message, /NAME_UNKNOWN: repository name not known/);
    const digest = errorFromResponse(
      400,
      '{"errors":[{"code":"DIGEST_INVALID","message":"bad"}]}',
      { what: 'PUT' },
    );
    assert.equal(digest.code, 'FERRY_DIGEST_MISMATCH');
    assert.equal(digest.transient, false);
    const reset = classifyError(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
    assert.ok(
      reset instanceof RegistryError &&
        reset.code === 'FERRY_REGISTRY_UNAVAILABLE' &&
        reset.transient,
    );
  });
});
