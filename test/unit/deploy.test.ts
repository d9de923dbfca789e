/**
 * deploy/k8s and docker-compose.yml, checked as far as this machine allows:
 * every Kubernetes object validated against the Kubernetes and KEDA API
 * schemas (kubernetes-models), the Compose file against the Compose
 * Specification, the cross-references between them and the code, and the Redis
 * lists KEDA watches filled by the queue package against a real redis-server.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import Ajv from 'ajv';
import { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { parse, parseAllDocuments } from 'yaml';
import { VARIABLES } from '@ferry/config';
import {
  QUEUE_NAMES,
  addUploadChild,
  createQueues,
  enqueuePush,
  removePushJobs,
  type PushRequest,
} from '@ferry/queue';
import { startRedis, type RedisHandle } from '../helpers/redis';

const repo = join(__dirname, '..', '..');
const k8s = join(repo, 'deploy', 'k8s');

// ---------------------------------------------------------------- kustomize

/* eslint-disable @typescript-eslint/no-explicit-any */
type Obj = Record<string, any>;

const KUSTOMIZATION_KEYS = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'components']);

/**
 * The subset of kustomize these manifests use (resources, components,
 * namespace), rendered here so the test needs no kubectl; a kustomization using
 * anything else fails, rather than being rendered wrong. Where kubectl is
 * installed, its rendering is compared with this one.
 */
function kustomize(dir: string, kind = 'Kustomization'): Obj[] {
  const k = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Obj;
  assert.equal(k.kind, kind, `${dir}: kind`);
  for (const key of Object.keys(k)) {
    assert.ok(KUSTOMIZATION_KEYS.has(key), `${dir}/kustomization.yaml: unsupported field ${key}`);
  }
  const out: Obj[] = [];
  for (const r of (k.resources ?? []) as string[]) {
    const p = resolve(dir, r);
    if (statSync(p).isDirectory()) out.push(...kustomize(p));
    else out.push(...readObjects(p));
  }
  for (const c of (k.components ?? []) as string[])
    out.push(...kustomize(resolve(dir, c), 'Component'));
  if (k.namespace) {
    for (const o of out) if (o.kind !== 'Namespace') o.metadata.namespace = k.namespace;
  }
  return out;
}

function readObjects(file: string): Obj[] {
  return parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => {
      assert.deepEqual(d.errors, [], `${file}: YAML errors`);
      return d.toJS() as Obj | null;
    })
    .filter((o): o is Obj => o !== null);
}

const RENDERINGS = { keda: k8s, 'cpu-hpa': join(k8s, 'overlays', 'cpu-hpa') };

/** The model class validating an object of this apiVersion and kind. */
async function modelOf(
  apiVersion: string,
  kind: string,
): Promise<new (o: Obj) => { validate(): void }> {
  const spec = apiVersion.startsWith('keda.sh/')
    ? `@kubernetes-models/keda/${apiVersion}/${kind}`
    : `kubernetes-models/${apiVersion}/${kind}`;
  const mod = (await import(spec)) as Record<string, new (o: Obj) => { validate(): void }>;
  const model = mod[kind];
  assert.ok(model, `${spec} exports no ${kind}`);
  return model;
}

// ---------------------------------------------------------------- code facts

const ROLES = ['api', 'lookup', 'upload', 'coordinator'] as const;
type Role = (typeof ROLES)[number];

/** Routes the API and a worker's health port really serve, read from their sources. */
function realRoutes(): Record<'api' | 'worker', Set<string>> {
  const api = readFileSync(join(repo, 'services', 'api', 'src', 'routes-service.ts'), 'utf8');
  const health = readFileSync(join(repo, 'packages', 'runtime', 'src', 'health.ts'), 'utf8');
  return {
    api: new Set([...api.matchAll(/route\('GET', '(\/[a-z]+)'/g)].map((m) => m[1]!)),
    worker: new Set([...health.matchAll(/path === '(\/[a-z]+)'/g)].map((m) => m[1]!)),
  };
}

/**
 * Variables a deployment may leave unset, and why; every other variable config
 * reads must be set for every role. A new variable fails this test until it is
 * set in the manifests or listed here.
 */
const LEFT_UNSET: Record<string, { roles: readonly Role[] | 'all'; why: string }> = {
  FERRY_CA_FILE: { roles: 'all', why: 'registries with public CAs; mount a bundle to set it' },
  FERRY_SIGNING_KEY: { roles: 'all', why: 'no signing until keys are in ferry-signing-keys' },
  FERRY_SIGNING_CERT: { roles: 'all', why: 'schema1 x5c only' },
  FERRY_PGP_KEY: { roles: 'all', why: 'no simple signing until a key is in ferry-signing-keys' },
  FERRY_KEY_PASSPHRASE_FILE: { roles: 'all', why: 'only for an encrypted key' },
  FERRY_URL: { roles: 'all', why: 'the CLI, not a role' },
  FERRY_TOKEN: { roles: 'all', why: 'the CLI, not a role' },
  FERRY_ADMIN_TOKENS: { roles: ['lookup', 'upload', 'coordinator'], why: 'read by the API only' },
  FERRY_API_TOKENS: { roles: ['lookup', 'upload', 'coordinator'], why: 'read by the API only' },
  FERRY_HEALTH_PORT: { roles: ['api'], why: 'the API serves health on FERRY_PORT' },
  FERRY_DOCKER_CONFIG: { roles: ['api'], why: 'the API makes no registry request' },
  FERRY_REDIS_CLUSTER: { roles: 'all', why: 'one Redis node: FERRY_REDIS_URL' },
  FERRY_REDIS_SENTINELS: { roles: 'all', why: 'one Redis node: FERRY_REDIS_URL' },
  FERRY_REDIS_SENTINEL_NAME: { roles: 'all', why: 'one Redis node: FERRY_REDIS_URL' },
};
/** Entries above that config may not read yet (Redis Cluster/Sentinel support lands separately). */
const PENDING = new Set([
  'FERRY_REDIS_CLUSTER',
  'FERRY_REDIS_SENTINELS',
  'FERRY_REDIS_SENTINEL_NAME',
]);

function unsetProblems(where: string, role: Role, env: Record<string, string>): string[] {
  const problems: string[] = [];
  for (const v of VARIABLES as readonly string[]) {
    if (env[v] !== undefined) continue;
    const left = LEFT_UNSET[v];
    if (left && (left.roles === 'all' || left.roles.includes(role))) continue;
    problems.push(`${where}: ${v} is neither set nor left to its default on purpose`);
  }
  for (const v of Object.keys(env)) {
    if (v.startsWith('FERRY_') && !(VARIABLES as readonly string[]).includes(v))
      problems.push(`${where}: ${v} is not a variable Ferry reads`);
  }
  return problems;
}

function roleOf(args: unknown): Role {
  assert.ok(Array.isArray(args), 'container args');
  const [cmd, flag, role] = args as string[];
  assert.equal(cmd, 'serve');
  assert.equal(flag, '--role');
  assert.ok((ROLES as readonly string[]).includes(role!), `role ${role}`);
  return role as Role;
}

// ---------------------------------------------------------------- Kubernetes

interface Rendered {
  objects: Obj[];
  get(kind: string, name: string): Obj | undefined;
}

function render(dir: string): Rendered {
  const objects = kustomize(dir);
  return {
    objects,
    get: (kind, name) => objects.find((o) => o.kind === kind && o.metadata?.name === name),
  };
}

/** The environment a container sees: envFrom ConfigMaps and Secrets, then env. */
function containerEnv(
  r: Rendered,
  c: Obj,
  problems: string[],
  where: string,
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of (c.envFrom ?? []) as Obj[]) {
    const ref = from.configMapRef ?? from.secretRef;
    const kind = from.configMapRef ? 'ConfigMap' : 'Secret';
    const o = r.get(kind, ref.name);
    if (!o) {
      problems.push(`${where}: envFrom ${kind} ${ref.name} does not exist`);
      continue;
    }
    Object.assign(env, o.data ?? {}, o.stringData ?? {});
  }
  for (const e of (c.env ?? []) as Obj[]) {
    if (e.valueFrom) {
      const ref = e.valueFrom.configMapKeyRef ?? e.valueFrom.secretKeyRef;
      const kind = e.valueFrom.configMapKeyRef ? 'ConfigMap' : 'Secret';
      const o = r.get(kind, ref.name);
      const value = o?.data?.[ref.key] ?? o?.stringData?.[ref.key];
      if (value === undefined)
        problems.push(`${where}: ${e.name} from ${kind} ${ref.name}/${ref.key}: missing`);
      else env[e.name] = String(value);
    } else env[e.name] = String(e.value);
  }
  return env;
}

function portNumber(c: Obj, port: string | number): number | undefined {
  if (typeof port === 'number') return port;
  return ((c.ports ?? []) as Obj[]).find((p) => p.name === port)?.containerPort;
}

function labelsMatch(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** Every cross-reference of one rendering; returns the problems found. */
function crossCheck(r: Rendered): {
  problems: string[];
  roles: Map<Role, { deployment: Obj; env: Record<string, string> }>;
} {
  const problems: string[] = [];
  const routes = realRoutes();
  const roles = new Map<Role, { deployment: Obj; env: Record<string, string> }>();
  for (const d of r.objects.filter((o) => o.kind === 'Deployment')) {
    const name = d.metadata.name as string;
    const pod = d.spec.template.spec as Obj;
    assert.equal(pod.containers.length, 1, `${name}: one container`);
    const c = pod.containers[0] as Obj;
    const role = roleOf(c.args);
    assert.ok(!roles.has(role), `${role}: two Deployments`);
    const env = containerEnv(r, c, problems, name);
    roles.set(role, { deployment: d, env });
    if (!labelsMatch(d.spec.selector.matchLabels, d.spec.template.metadata.labels))
      problems.push(`${name}: selector does not match its pods`);
    problems.push(...unsetProblems(name, role, env));
    if (env.FERRY_HOST !== '0.0.0.0')
      problems.push(`${name}: FERRY_HOST is ${env.FERRY_HOST}, not 0.0.0.0`);
    // probes: real routes on the port the role listens on
    const listen = role === 'api' ? Number(env.FERRY_PORT ?? 8080) : Number(env.FERRY_HEALTH_PORT);
    const served = role === 'api' ? routes.api : routes.worker;
    for (const [probe, path] of [
      ['livenessProbe', '/healthz'],
      ['readinessProbe', '/readyz'],
      ['startupProbe', undefined],
    ] as const) {
      const p = c[probe] as Obj | undefined;
      if (!p) {
        if (path) problems.push(`${name}: no ${probe}`);
        continue;
      }
      const get = p.httpGet as Obj;
      if (path && get?.path !== path)
        problems.push(`${name}: ${probe} on ${get?.path}, not ${path}`);
      if (!served.has(get?.path))
        problems.push(`${name}: ${probe} path ${get?.path} is not served by ${role}`);
      if (portNumber(c, get?.port) !== listen)
        problems.push(
          `${name}: ${probe} port ${get?.port} is not ${listen}, where ${role} listens`,
        );
    }
    // resources, shutdown
    for (const k of ['requests', 'limits'])
      for (const res of ['cpu', 'memory'])
        if (!c.resources?.[k]?.[res]) problems.push(`${name}: no ${k}.${res}`);
    const shutdown = Number(env.FERRY_SHUTDOWN_TIMEOUT ?? 30);
    if (!(pod.terminationGracePeriodSeconds > shutdown))
      problems.push(
        `${name}: terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} <= ${shutdown}`,
      );
    // volumes: every Secret, ConfigMap and claim exists; keys and secrets go only where they belong
    const volumes = new Map<string, Obj>(((pod.volumes ?? []) as Obj[]).map((v) => [v.name, v]));
    const mounts: Obj[] = ((c.volumeMounts ?? []) as Obj[]).map((m) => ({
      ...m,
      volume: volumes.get(m.name as string),
    }));
    for (const m of mounts) if (!m.volume) problems.push(`${name}: mount ${m.name} has no volume`);
    for (const v of volumes.values()) {
      if (v.secret && !r.get('Secret', v.secret.secretName))
        problems.push(`${name}: Secret ${v.secret.secretName} missing`);
      if (v.configMap && !r.get('ConfigMap', v.configMap.name))
        problems.push(`${name}: ConfigMap ${v.configMap.name} missing`);
      if (v.persistentVolumeClaim) {
        const pvc = r.get('PersistentVolumeClaim', v.persistentVolumeClaim.claimName);
        if (!pvc) problems.push(`${name}: PVC ${v.persistentVolumeClaim.claimName} missing`);
        else if (!pvc.spec.accessModes.includes('ReadWriteMany'))
          problems.push(`${name}: PVC not ReadWriteMany`);
      }
    }
    const secretsMounted = [...volumes.values()]
      .filter((v) => v.secret)
      .map((v) => v.secret.secretName as string);
    const envSecrets = ((c.envFrom ?? []) as Obj[])
      .filter((f) => f.secretRef)
      .map((f) => f.secretRef.name as string);
    const expectSecrets: Record<Role, string[]> = {
      api: ['ferry-api-tokens'],
      lookup: ['ferry-docker-config'],
      upload: ['ferry-docker-config'],
      coordinator: ['ferry-docker-config', 'ferry-signing-keys'],
    };
    if ([...secretsMounted, ...envSecrets].sort().join() !== expectSecrets[role].sort().join())
      problems.push(
        `${name}: Secrets ${[...secretsMounted, ...envSecrets].join(', ')}; expected ${expectSecrets[role].join(', ')}`,
      );
    const sources = mounts.find((m) => m.volume?.persistentVolumeClaim);
    if (sources?.mountPath !== env.FERRY_SOURCE_ROOT)
      problems.push(
        `${name}: FERRY_SOURCE_ROOT ${env.FERRY_SOURCE_ROOT} is not the sources mount ${sources?.mountPath}`,
      );
    if (env.FERRY_DOCKER_CONFIG) {
      const m = mounts.find(
        (x) => x.volume?.secret && env.FERRY_DOCKER_CONFIG!.startsWith(x.mountPath + '/'),
      );
      const secret = m && r.get('Secret', m.volume.secret.secretName);
      const key: string = m ? env.FERRY_DOCKER_CONFIG.slice(String(m.mountPath).length + 1) : '';
      if (!secret || (secret.stringData?.[key] ?? secret.data?.[key]) === undefined)
        problems.push(
          `${name}: FERRY_DOCKER_CONFIG ${env.FERRY_DOCKER_CONFIG} is in no mounted Secret`,
        );
    }
  }
  assert.deepEqual([...roles.keys()].sort(), [...ROLES].sort(), 'one Deployment per role');
  // the API Service reaches the API's port
  const api = roles.get('api')!.deployment;
  const services = r.objects.filter(
    (o) => o.kind === 'Service' && labelsMatch(o.spec.selector, api.spec.template.metadata.labels),
  );
  assert.equal(services.length, 1, 'one Service for the API');
  for (const p of services[0]!.spec.ports as Obj[]) {
    if (
      portNumber(api.spec.template.spec.containers[0], p.targetPort) !==
      Number(roles.get('api')!.env.FERRY_PORT)
    )
      problems.push(
        `Service ${services[0]!.metadata.name}: targetPort ${p.targetPort} is not the API's port`,
      );
  }
  // a PDB per role, each selecting exactly that role's pods
  for (const [role, { deployment }] of roles) {
    const pdbs = r.objects.filter(
      (o) =>
        o.kind === 'PodDisruptionBudget' &&
        labelsMatch(o.spec.selector.matchLabels, deployment.spec.template.metadata.labels),
    );
    if (pdbs.length !== 1) problems.push(`${role}: ${pdbs.length} PodDisruptionBudgets`);
  }
  // Redis: AOF and noeviction
  const redis = r.objects.find((o) => o.kind === 'StatefulSet' && o.metadata.name === 'redis');
  const args = (redis?.spec.template.spec.containers[0].args ?? []).join(' ');
  if (!/--appendonly yes/.test(args) || !/--maxmemory-policy noeviction/.test(args))
    problems.push(`redis: args ${args} lack AOF or noeviction`);
  // autoscalers: never two on one Deployment; KEDA watches the right list
  const scaled = new Map<string, string[]>();
  for (const o of r.objects) {
    if (o.kind !== 'ScaledObject' && o.kind !== 'HorizontalPodAutoscaler') continue;
    const target = o.spec.scaleTargetRef.name as string;
    scaled.set(target, [...(scaled.get(target) ?? []), `${o.kind}/${o.metadata.name}`]);
    const entry = [...roles.values()].find((x) => x.deployment.metadata.name === target);
    if (!entry) {
      problems.push(`${o.kind} ${o.metadata.name}: no Deployment ${target}`);
      continue;
    }
    if (entry.deployment.spec.replicas !== undefined)
      problems.push(`${target}: replicas set although ${o.kind} ${o.metadata.name} scales it`);
  }
  for (const [target, by] of scaled)
    if (by.length > 1) problems.push(`${target}: scaled by ${by.join(' and ')}`);
  return { problems, roles };
}

/** The Redis list each ScaledObject watches, by queue name, checked against its target's settings. */
function kedaLists(
  r: Rendered,
  roles: Map<Role, { deployment: Obj; env: Record<string, string> }>,
  problems: string[],
) {
  const lists = new Map<string, string>();
  for (const o of r.objects.filter((x) => x.kind === 'ScaledObject')) {
    const role = [...roles].find(
      ([, x]) => x.deployment.metadata.name === o.spec.scaleTargetRef.name,
    )?.[0];
    assert.ok(role === 'lookup' || role === 'upload', `${o.metadata.name} scales ${role}`);
    const env = roles.get(role)!.env;
    for (const t of o.spec.triggers as Obj[]) {
      assert.equal(t.type, 'redis', `${o.metadata.name}: a redis trigger`);
      const address = env[t.metadata.addressFromEnv];
      const url = new URL(env.FERRY_REDIS_URL!);
      if (address !== `${url.hostname}:${url.port || 6379}`)
        problems.push(
          `${o.metadata.name}: ${t.metadata.addressFromEnv}=${address} is not FERRY_REDIS_URL's ${url.host}`,
        );
      const expected = `${env.FERRY_QUEUE_PREFIX}:${QUEUE_NAMES[role]}:wait`;
      if (t.metadata.listName !== expected)
        problems.push(`${o.metadata.name}: listName ${t.metadata.listName}, expected ${expected}`);
      lists.set(QUEUE_NAMES[role], t.metadata.listName);
    }
  }
  return lists;
}

describe('deploy/k8s', function () {
  for (const [label, dir] of Object.entries(RENDERINGS)) {
    describe(`rendering ${label}`, () => {
      it('every object validates against the Kubernetes / KEDA API schema', async () => {
        const r = render(dir);
        assert.ok(r.objects.length > 10);
        const failures: string[] = [];
        for (const o of r.objects) {
          const Model = await modelOf(o.apiVersion, o.kind);
          try {
            new Model(o).validate();
          } catch (e) {
            failures.push(`${o.kind}/${o.metadata?.name}: ${(e as Error).message}`);
          }
        }
        assert.deepEqual(failures, []);
      });

      it('cross-references hold: env, Secrets, ConfigMaps, probes, ports, 0.0.0.0, autoscalers', () => {
        const r = render(dir);
        const { problems, roles } = crossCheck(r);
        const lists = kedaLists(r, roles, problems);
        assert.deepEqual(problems, []);
        const kinds = r.objects.map((o) => o.kind);
        if (label === 'keda') {
          assert.deepEqual([...lists.keys()].sort(), ['lookup', 'upload']);
          assert.ok(!kinds.includes('HorizontalPodAutoscaler'));
        } else {
          assert.equal(kinds.filter((k) => k === 'HorizontalPodAutoscaler').length, 2);
          assert.ok(!kinds.includes('ScaledObject'));
        }
      });

      it('renders the same objects as kubectl kustomize (when kubectl is installed)', function () {
        const run = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' });
        if (run.error) {
          // An extra cross-check: the manifests are validated without kubectl above. Under CI
          // (whose machine ships kubectl) a missing kubectl is a broken machine, not a skip.
          if (process.env.CI === 'true') throw new Error('kubectl is missing');
          this.skip();
        }
        assert.equal(run.status, 0, run.stderr);
        const theirs = parseAllDocuments(run.stdout).map((d) => d.toJS() as Obj);
        const key = (o: Obj) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
        assert.deepEqual(theirs.map(key).sort(), render(dir).objects.map(key).sort());
      });
    });
  }

  it('the LEFT_UNSET table names only variables config reads (or Redis ones about to land)', () => {
    const unknown = Object.keys(LEFT_UNSET).filter(
      (v) => !(VARIABLES as readonly string[]).includes(v) && !PENDING.has(v),
    );
    assert.deepEqual(unknown, []);
  });

  describe('the Redis list each KEDA ScaledObject watches is the one BullMQ fills', function () {
    let redis: RedisHandle | undefined;
    let conn: Redis | undefined;
    after(async () => {
      conn?.disconnect();
      await redis?.stop();
    });

    it('LLEN > 0 while a push is queued with no worker, 0 once the jobs are taken or removed', async () => {
      const r = render(k8s);
      const problems: string[] = [];
      const { roles } = crossCheck(r);
      const lists = kedaLists(r, roles, problems);
      const prefix = roles.get('lookup')!.env.FERRY_QUEUE_PREFIX!;
      redis = await startRedis();
      conn = new Redis(redis.url, { maxRetriesPerRequest: null });
      const queues = createQueues({ connection: conn, prefix });
      try {
        const request: PushRequest = {
          source: 'dir:/srv/images/app',
          target: 'registry.example.com/team/app:1',
          tags: [],
          format: 'oci',
        };
        await enqueuePush(queues, 'keda1', request, { images: [{ layers: 3 }] }, { gzipLevel: 6 });
        const lookupList = lists.get('lookup')!;
        const uploadList = lists.get('upload')!;
        assert.equal(await conn.type(lookupList), 'list');
        assert.equal(await conn.llen(lookupList), 3, `${lookupList} holds the 3 lookup jobs`);
        assert.equal(await conn.llen(uploadList), 0);
        // a lookup worker finding a blob missing adds its upload
        await addUploadChild(queues, null, {
          v: 2,
          pushId: 'keda1',
          imageIndex: 0,
          layerIndex: 0,
          source: request.source,
          target: request.target,
          gzipLevel: 6,
        } as never);
        assert.equal(await conn.type(uploadList), 'list');
        assert.equal(await conn.llen(uploadList), 1, `${uploadList} holds the upload job`);

        // taken: a worker on the lookup queue empties its wait list
        const workerConn = new Redis(redis.url, { maxRetriesPerRequest: null });
        const worker = new Worker(QUEUE_NAMES.lookup, async () => 'ok', {
          connection: workerConn,
          prefix,
          autorun: true,
        });
        try {
          const deadline = Date.now() + 20_000;
          while ((await queues.lookup.getJobCounts('completed')).completed < 3) {
            assert.ok(Date.now() < deadline, 'the lookup jobs were not taken');
            await new Promise((res) => setTimeout(res, 50));
          }
        } finally {
          await worker.close();
          workerConn.disconnect();
        }
        assert.equal(await conn.llen(lookupList), 0, `${lookupList} is empty once taken`);
        // removed: a cancel takes the waiting upload out
        await removePushJobs(queues, 'keda1', { images: [{ layers: 3 }] });
        assert.equal(await conn.llen(uploadList), 0, `${uploadList} is empty once removed`);
      } finally {
        await queues.close();
      }
    });
  });
});

// ---------------------------------------------------------------- Compose

const composeSchema = join(repo, '..', 'shared', 'schemas', 'compose-spec.json');

describe('docker-compose.yml', () => {
  const compose = () =>
    parse(readFileSync(join(repo, 'docker-compose.yml'), 'utf8'), { merge: true }) as Obj;

  it('is valid against the Compose Specification (merge keys resolved)', function () {
    if (!existsSync(composeSchema)) {
      if (process.env.CI === 'true') throw new Error(`${composeSchema} is missing`);
      this.skip();
    }
    const ajv = new Ajv({
      allErrors: true,
      strict: false,
      validateFormats: false,
      validateSchema: false,
    });
    const validate = ajv.compile(JSON.parse(readFileSync(composeSchema, 'utf8')));
    assert.ok(validate(compose()), JSON.stringify(validate.errors, null, 2));
  });

  it('cross-references hold: roles, env, 0.0.0.0, health checks, Redis settings, volumes, secrets', () => {
    const doc = compose();
    const problems: string[] = [];
    const routes = realRoutes();
    const seen = new Set<Role>();
    for (const [name, s] of Object.entries(doc.services as Record<string, Obj>)) {
      if (!Array.isArray(s.command) || s.command[0] !== 'serve') continue;
      const role = roleOf(s.command);
      seen.add(role);
      const env = Object.fromEntries(
        Object.entries((s.environment ?? {}) as Record<string, unknown>).map(([k, v]) => [
          k,
          String(v ?? ''),
        ]),
      );
      problems.push(...unsetProblems(name, role, env));
      if (env.FERRY_HOST !== '0.0.0.0') problems.push(`${name}: FERRY_HOST ${env.FERRY_HOST}`);
      const test = ((s.healthcheck?.test ?? []) as string[]).join(' ');
      const m = /http:\/\/127\.0\.0\.1:(\d+)(\/[a-z]+)/.exec(test);
      const listen = role === 'api' ? env.FERRY_PORT : env.FERRY_HEALTH_PORT;
      if (!m || m[1] !== listen)
        problems.push(`${name}: health check ${test} is not on port ${listen}`);
      else if (!(role === 'api' ? routes.api : routes.worker).has(m[2]!))
        problems.push(`${name}: health check path ${m[2]} is not served`);
      const grace = Number(/^(\d+)s$/.exec(String(s.stop_grace_period))?.[1]);
      if (!(grace > Number(env.FERRY_SHUTDOWN_TIMEOUT ?? 30)))
        problems.push(`${name}: stop_grace_period ${s.stop_grace_period}`);
      const sources = ((s.volumes ?? []) as string[]).find(
        (v) => v.split(':')[1] === env.FERRY_SOURCE_ROOT,
      );
      if (!sources) problems.push(`${name}: nothing mounted at FERRY_SOURCE_ROOT`);
      else if (!(sources.split(':')[0]! in (doc.volumes ?? {})))
        problems.push(`${name}: ${sources} is not a shared named volume`);
      for (const sec of (s.secrets ?? []) as string[])
        if (!doc.secrets?.[sec]) problems.push(`${name}: secret ${sec} undefined`);
      if (
        env.FERRY_DOCKER_CONFIG &&
        !((s.secrets ?? []) as string[]).some(
          (x) => env.FERRY_DOCKER_CONFIG === `/run/secrets/${x}`,
        )
      )
        problems.push(`${name}: FERRY_DOCKER_CONFIG is not a mounted secret`);
      if (!/^redis:\/\/redis:6379$/.test(env.FERRY_REDIS_URL ?? ''))
        problems.push(`${name}: FERRY_REDIS_URL`);
    }
    assert.deepEqual([...seen].sort(), [...ROLES].sort());
    for (const sec of Object.values((doc.secrets ?? {}) as Record<string, Obj>))
      if (sec.file && !existsSync(join(repo, sec.file)))
        problems.push(`secret file ${sec.file} missing`);
    assert.equal(doc.services['upload-worker']?.deploy?.replicas, 2);
    const redisCmd = (doc.services.redis.command as string[]).join(' ');
    assert.match(redisCmd, /--appendonly yes/);
    assert.match(redisCmd, /--maxmemory-policy noeviction/);
    assert.ok(doc.services.redis.healthcheck && doc.services.registry.healthcheck);
    assert.deepEqual(problems, []);
  });
});
