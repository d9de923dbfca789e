import type { RedisConnection } from './connection';

type CommandFn = (...args: (string | number)[]) => Promise<unknown>;

/** Names already defined on each connection (ioredis keeps its own per instance). */
const defined = new WeakMap<RedisConnection, Set<string>>();

/**
 * A Lua script run through ioredis' `defineCommand`, as BullMQ loads its own:
 * ioredis sends EVALSHA and falls back to EVAL on NOSCRIPT (a restarted or
 * flushed Redis), so no caller handles script loading. The command is defined
 * on a connection the first time the script runs on it.
 */
export class Script {
  /**
   * @param name a command name unique within Ferry (becomes a method on the connection)
   * @param lua the script; KEYS come first, then ARGV
   */
  constructor(
    readonly name: string,
    readonly lua: string,
  ) {
    if (!/^ferry[A-Z][A-Za-z]+$/.test(name)) throw new Error(`bad script name ${name}`);
  }

  /** Runs the script with any number of keys (numkeys is passed per call). */
  async run(redis: RedisConnection, keys: string[], args: (string | number)[]): Promise<unknown> {
    let names = defined.get(redis);
    if (!names) {
      names = new Set();
      defined.set(redis, names);
    }
    if (!names.has(this.name)) {
      redis.defineCommand(this.name, { lua: this.lua });
      names.add(this.name);
    }
    const command = (redis as unknown as Record<string, CommandFn>)[this.name];
    return command.call(redis, keys.length, ...keys, ...args);
  }
}
