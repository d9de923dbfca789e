/**
 * Redis beyond one node for tests: a Redis Cluster of `redis-server
 * --cluster-enabled yes` masters, and one master watched by one
 * `redis-sentinel`. Local binaries only (Debian's redis-server and
 * redis-sentinel), loopback, free ports, temp dirs, stopped by pid.
 */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './ports';
import { spawnService, type ServiceHandle } from './processes';
import { redisPing, startRedis, type RedisHandle } from './redis';
import { findBinary } from './runtime';
import { removeTmpDir, tmpDir } from './tmp';

const run = promisify(execFile);

export interface RedisNodeHandle {
  host: string;
  port: number;
  pid: number;
}

export interface RedisClusterHandle {
  /** The masters, each serving a third (or so) of the 16384 slots. */
  nodes: RedisNodeHandle[];
  /** `host:port,…`, as FERRY_REDIS_CLUSTER takes it. */
  seeds: string;
  /** Runs redis-cli against one node (default the first) and returns its output. */
  cli(args: string[], node?: RedisNodeHandle): Promise<string>;
  stop(): Promise<void>;
}

export interface RedisSentinelHandle {
  /** The master the Sentinel watches. */
  master: RedisHandle;
  /** The Sentinel's own port. */
  sentinel: RedisNodeHandle;
  /** `host:port`, as FERRY_REDIS_SENTINELS takes it. */
  sentinels: string;
  /** The master name, as FERRY_REDIS_SENTINEL_NAME takes it. */
  name: string;
  stop(): Promise<void>;
}

/** The path of a binary, or a one-line error saying how to install it. */
function binary(name: string): string {
  const path = findBinary(name);
  if (!path) throw new Error(`${name} is missing: bash scripts/install-system-deps.sh`);
  return path;
}

/** True when the binaries this file needs are installed (redis-sentinel for Sentinel). */
export function haveRedisBinaries(sentinel = false): boolean {
  return (
    findBinary('redis-server') !== undefined &&
    findBinary('redis-cli') !== undefined &&
    (!sentinel || findBinary('redis-sentinel') !== undefined)
  );
}

async function redisCli(port: number, args: string[]): Promise<string> {
  const { stdout } = await run(
    binary('redis-cli'),
    ['-h', '127.0.0.1', '-p', String(port), ...args],
    {
      timeout: 30_000,
    },
  );
  return stdout;
}

const COMMON_ARGS = [
  '--bind',
  '127.0.0.1',
  '--save',
  '',
  '--appendonly',
  'no',
  '--maxmemory-policy',
  'noeviction',
  '--protected-mode',
  'yes',
  '--daemonize',
  'no',
  '--logfile',
  '',
];

/** Starts one cluster-enabled node; its bus port is chosen apart (port + 10000 may be out of range). */
async function startClusterNode(dir: string): Promise<ServiceHandle & { port: number }> {
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const busPort = await freePort();
    try {
      const service = await spawnService({
        name: 'redis-server (cluster)',
        cmd: binary('redis-server'),
        args: [
          '--port',
          String(port),
          '--cluster-enabled',
          'yes',
          '--cluster-port',
          String(busPort),
          '--cluster-config-file',
          join(dir, `nodes-${port}.conf`),
          '--cluster-node-timeout',
          '5000',
          '--dir',
          dir,
          ...COMMON_ARGS,
        ],
        cwd: dir,
        ready: () => redisPing('127.0.0.1', port),
      });
      return Object.assign(service, { port });
    } catch (err) {
      lastError = err as Error;
      if (!/Address already in use/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError as Error;
}

/**
 * A Redis Cluster of `masters` nodes (no replicas), created with
 * `redis-cli --cluster create`; resolves once every node reports
 * cluster_state:ok and knows every slot.
 */
export async function startRedisCluster(masters = 3): Promise<RedisClusterHandle> {
  const dir = tmpDir('redis-cluster');
  const services: (ServiceHandle & { port: number })[] = [];
  const stop = async () => {
    await Promise.allSettled(services.map((s) => s.stop()));
    removeTmpDir(dir);
  };
  try {
    for (let i = 0; i < masters; i++) services.push(await startClusterNode(dir));
    await run(
      binary('redis-cli'),
      [
        '--cluster',
        'create',
        ...services.map((s) => `127.0.0.1:${s.port}`),
        '--cluster-replicas',
        '0',
        '--cluster-yes',
      ],
      { timeout: 60_000 },
    );
    const deadline = Date.now() + 30_000;
    for (const s of services) {
      for (;;) {
        const info = await redisCli(s.port, ['CLUSTER', 'INFO']).catch(() => '');
        if (/cluster_state:ok/.test(info) && /cluster_slots_ok:16384/.test(info)) break;
        if (Date.now() > deadline) {
          throw new Error(`cluster node ${s.port} not ok after 30 s:\n${info}\n${s.logs()}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const nodes = services.map((s) => ({ host: '127.0.0.1', port: s.port, pid: s.pid }));
  return {
    nodes,
    seeds: nodes.map((n) => `${n.host}:${n.port}`).join(','),
    cli: (args, node = nodes[0]) => redisCli(node.port, args),
    stop,
  };
}

/**
 * One redis-server master and one redis-sentinel watching it under `name`
 * (quorum 1); resolves once the Sentinel answers the master's address.
 */
export async function startRedisSentinel(name = 'ferry-master'): Promise<RedisSentinelHandle> {
  const master = await startRedis();
  const dir = tmpDir('redis-sentinel');
  let service: ServiceHandle | undefined;
  try {
    let lastError: Error | undefined;
    for (let attempt = 0; attempt < 3 && !service; attempt++) {
      const port = await freePort();
      // Sentinel rewrites its config file (it records what it learns), so it gets its own copy.
      const conf = join(dir, `sentinel-${port}.conf`);
      writeFileSync(
        conf,
        [
          `port ${port}`,
          'bind 127.0.0.1',
          'daemonize no',
          'logfile ""',
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${master.port} 1`,
          `sentinel down-after-milliseconds ${name} 5000`,
          `sentinel failover-timeout ${name} 10000`,
          '',
        ].join('\n'),
      );
      try {
        service = await spawnService({
          name: 'redis-sentinel',
          cmd: binary('redis-sentinel'),
          args: [conf],
          cwd: dir,
          ready: async () => {
            const out = await redisCli(port, ['SENTINEL', 'get-master-addr-by-name', name]);
            return out.includes(String(master.port));
          },
        });
        const sentinel = { host: '127.0.0.1', port, pid: service.pid };
        const running = service;
        return {
          master,
          sentinel,
          sentinels: `${sentinel.host}:${sentinel.port}`,
          name,
          async stop() {
            await running.stop();
            await master.stop();
            removeTmpDir(dir);
          },
        };
      } catch (err) {
        lastError = err as Error;
        if (!/Address already in use/i.test(lastError.message)) throw lastError;
      }
    }
    throw lastError as Error;
  } catch (err) {
    await service?.stop();
    await master.stop();
    removeTmpDir(dir);
    throw err;
  }
}
