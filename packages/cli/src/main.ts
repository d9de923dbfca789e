import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { loadConfig } from '@ferry/config';
import { createLogger } from '@ferry/log';
import { CliError, FerryClient } from './client';
import {
  JsonRenderer,
  PlainRenderer,
  TtyRenderer,
  formatBytes,
  layerText,
  type Renderer,
} from './render';
import { ROLES, type Role } from './roles';
import type { KeygenOpts, VerifyOpts } from './signing';
import { absolutizeSource } from './source-arg';

export interface CliIo {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: Record<string, string | undefined>;
  cwd: string;
  /** Calls the handler on each Ctrl-C (SIGINT) until the returned function is called. */
  onInterrupt?: (handler: () => void) => () => void;
}

function processInterrupts(handler: () => void): () => void {
  process.on('SIGINT', handler);
  return () => process.off('SIGINT', handler);
}

const DEFAULT_URL = 'http://127.0.0.1:8080';

/** keygen / verify, loaded only when run: `ferry push` never loads the signing library. */
function signingCommands(): typeof import('./signing') {
  return require('./signing') as typeof import('./signing');
}

interface ServerOpts {
  server?: string;
  token?: string;
  json?: boolean;
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

function client(opts: ServerOpts, io: CliIo): FerryClient {
  return new FerryClient({
    server: opts.server ?? io.env.FERRY_URL ?? DEFAULT_URL,
    token: opts.token ?? (io.env.FERRY_TOKEN || undefined),
  });
}

function serverOptions(cmd: Command): Command {
  return cmd
    .option('--server <url>', `Ferry API URL (default: $FERRY_URL or ${DEFAULT_URL})`)
    .option('--token <token>', 'API bearer token (default: $FERRY_TOKEN)');
}

interface PushOpts extends ServerOpts {
  tag: string[];
  sign?: boolean;
  schema1?: boolean;
  format?: 'oci' | 'docker';
  platform?: string;
  owners?: 'root' | 'keep';
  mtime?: 'epoch' | 'keep' | number;
  wait: boolean;
  cancelOnInterrupt?: boolean;
  allTags?: boolean;
  /** false with --no-signatures. */
  signatures?: boolean;
}

/** The largest mtime a tar header holds (11 octal digits), as the API's schema allows. */
export const MAX_MTIME_SECONDS = 8589934591;

/** `--mtime epoch|keep|SECONDS`: SECONDS becomes a number (REST dirOptions.mtime). */
export function parseMtime(value: string): 'epoch' | 'keep' | number {
  if (value === 'epoch' || value === 'keep') return value;
  if (/^\d+$/.test(value) && Number(value) <= MAX_MTIME_SECONDS) return Number(value);
  throw new InvalidArgumentError(
    `Expected epoch, keep or whole seconds since the epoch (0 to ${MAX_MTIME_SECONDS}).`,
  );
}

/** `--json`: an error becomes the last JSON object on stdout too (the one line still goes to stderr). */
async function push(source: string, targets: string[], opts: PushOpts, io: CliIo): Promise<number> {
  try {
    return await pushAndFollow(source, targets, opts, io);
  } catch (err) {
    if (opts.json && !(err instanceof FinalStatusError)) {
      const e = err as { code?: unknown; message?: string; field?: string };
      io.stdout.write(
        JSON.stringify({
          type: 'error',
          error: {
            code: typeof e.code === 'string' ? e.code : 'FERRY_ERROR',
            message: e.message ?? String(err),
            ...(e.field ? { field: e.field } : {}),
          },
        }) + '\n',
      );
    }
    throw err;
  }
}

/** The push ended failed or cancelled: with --json its final status event is already on stdout. */
class FinalStatusError extends CliError {}

async function pushAndFollow(
  source: string,
  targets: string[],
  opts: PushOpts,
  io: CliIo,
): Promise<number> {
  const api = client(opts, io);
  const target = targets[0];
  const body: Record<string, unknown> = { source: absolutizeSource(source, io.cwd), target };
  // Fan-out: one push to every TARGET, the source read once.
  if (targets.length > 1) body.targets = targets.slice(1);
  if (opts.allTags) body.allTags = true;
  if (opts.signatures === false) body.copySignatures = false;
  if (opts.tag.length) body.tags = opts.tag;
  if (opts.sign) body.sign = true;
  if (opts.schema1) body.schema1 = true;
  if (opts.format) body.format = opts.format;
  if (opts.platform) body.platform = opts.platform;
  // Sent as given: the server refuses them for a source that is not dir: (400, field dirOptions).
  if (opts.owners !== undefined || opts.mtime !== undefined) {
    body.dirOptions = {
      ...(opts.owners !== undefined ? { owners: opts.owners } : {}),
      ...(opts.mtime !== undefined ? { mtime: opts.mtime } : {}),
    };
  }
  const accepted = await api.createPush(body).catch((err: unknown) => {
    // REST names dirOptions; on the command line they are --owners and --mtime.
    if (err instanceof CliError && err.field?.startsWith('dirOptions'))
      throw new CliError(err.code, `${err.message} (--owners, --mtime)`, err.exitCode, err.field);
    throw err;
  });
  if (!opts.wait) {
    io.stdout.write(opts.json ? JSON.stringify(accepted) + '\n' : `${accepted.id}\n`);
    return 0;
  }
  const renderer: Renderer = opts.json
    ? new JsonRenderer(io.stdout)
    : io.stderr.isTTY
      ? new TtyRenderer(io.stderr)
      : new PlainRenderer(io.stderr);
  renderer.start({ id: accepted.id, source: String(body.source), target });
  const id = accepted.id;
  const stop = new AbortController();
  let interrupts = 0;
  const unsubscribe = (io.onInterrupt ?? processInterrupts)(() => {
    interrupts++;
    // A second Ctrl-C (a slow cancel) ends at once.
    if (interrupts > 1) process.exit(130);
    stop.abort();
  });
  let final: Awaited<ReturnType<FerryClient['followEvents']>>;
  try {
    final = await api.followEvents(id, (e) => renderer.event(e), {
      onReconnect: (n, why) => renderer.reconnect(n, why),
      signal: stop.signal,
    });
  } catch (err) {
    if (!stop.signal.aborted) throw err;
    renderer.end();
    return await interrupted(api, id, opts, io).finally(unsubscribe);
  }
  unsubscribe();
  renderer.end();
  if (!opts.json) {
    for (const t of final.targets ?? []) {
      io.stderr.write(
        `${t.target}: ${t.status}${t.manifest ? ` ${t.manifest.digest}` : ''}${t.error ? ` (${t.error.code}: ${t.error.message})` : ''}\n`,
      );
    }
  }
  if (final.status === 'succeeded') {
    const digest = final.manifest?.digest ?? (await api.getPush(accepted.id)).manifest?.digest;
    if (!digest)
      throw new CliError(
        'FERRY_BAD_RESPONSE',
        `push ${accepted.id} succeeded without a manifest digest`,
      );
    if (!opts.json) io.stdout.write(`${digest}\n`);
    return 0;
  }
  const err = final.error ?? {
    code: `FERRY_PUSH_${final.status.toUpperCase()}`,
    message: `push ${accepted.id} ${final.status}`,
  };
  throw new FinalStatusError(err.code, err.message);
}

/**
 * The first Ctrl-C while following a push: the push goes on on the server (say so, and how to
 * follow or stop it), or with --cancel-on-interrupt it is cancelled. Exit status 130 either way.
 */
async function interrupted(
  api: FerryClient,
  id: string,
  opts: PushOpts,
  io: CliIo,
): Promise<number> {
  const json = (o: object) => {
    if (opts.json) io.stdout.write(JSON.stringify({ type: 'interrupted', id, ...o }) + '\n');
  };
  if (!opts.cancelOnInterrupt) {
    io.stderr.write(
      `\ninterrupted: push ${id} continues on the server; follow it with \`ferry status ${id}\`, stop it with \`ferry cancel ${id}\`\n`,
    );
    json({ cancelled: false });
    return 130;
  }
  io.stderr.write(`\ninterrupted: cancelling push ${id} (--cancel-on-interrupt)\n`);
  let r: { status: string };
  try {
    r = await api.cancelPush(id);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    throw new CliError(
      e.code ?? 'FERRY_ERROR',
      `interrupted, but push ${id} could not be cancelled: ${e.message ?? String(err)}; try \`ferry cancel ${id}\``,
      130,
    );
  }
  io.stderr.write(
    r.status === 'cancelled'
      ? `push ${id} cancelled\n`
      : `push ${id} had already ended: ${r.status}\n`,
  );
  json({ cancelled: r.status === 'cancelled', status: r.status });
  return 130;
}

async function status(id: string, opts: ServerOpts, io: CliIo): Promise<number> {
  const s = await client(opts, io).getPush(id);
  if (opts.json) {
    io.stdout.write(JSON.stringify(s) + '\n');
    return 0;
  }
  const lines = [
    `id:       ${s.id}`,
    `status:   ${s.status}`,
    `source:   ${s.source}`,
    `target:   ${s.target}`,
  ];
  if (s.tags?.length) lines.push(`tags:     ${s.tags.join(', ')}`);
  for (const t of s.targets ?? []) {
    const what = t.manifest?.digest ?? (t.error ? `${t.error.code}: ${t.error.message}` : '');
    lines.push(`  target ${t.target}: ${t.status} ${what}`);
  }
  lines.push(`created:  ${s.createdAt}`);
  if (s.finishedAt) lines.push(`finished: ${s.finishedAt}`);
  for (const l of s.layers ?? []) {
    const name = l.digest ?? `layer ${l.index}`;
    const img = s.layers.some((x) => x.imageIndex > 0) ? `image ${l.imageIndex} ` : '';
    const read =
      l.state === 'uploading' && l.total && l.bytesRead !== undefined
        ? `${formatBytes(l.bytesRead)}/${formatBytes(l.total)} read, `
        : '';
    const sent = l.bytesSent ? `${formatBytes(l.bytesSent)} sent` : '';
    lines.push(`  ${img}${name}: ${layerText(l)}${read || sent ? ` (${read}${sent})` : ''}`);
  }
  for (const m of s.manifests ?? [])
    lines.push(
      `  manifest ${m.digest}${m.tag ? ` tag ${m.tag}` : ''}${m.platform ? ` ${m.platform}` : ''}`,
    );
  if (s.error) lines.push(`error:    ${s.error.code}: ${s.error.message}`);
  if (s.manifest)
    lines.push(`manifest: ${s.manifest.mediaType} ${s.manifest.size} bytes`, s.manifest.digest);
  io.stdout.write(lines.join('\n') + '\n');
  return 0;
}

async function cancel(id: string, opts: ServerOpts, io: CliIo): Promise<number> {
  const r = await client(opts, io).cancelPush(id);
  io.stdout.write(opts.json ? JSON.stringify(r) + '\n' : `${r.id}: ${r.status}\n`);
  return 0;
}

async function runServe(roleArg: string, io: CliIo): Promise<number> {
  const roles: Role[] = roleArg === 'all' ? [...ROLES] : [roleArg as Role];
  const config = loadConfig(io.env, io.cwd);
  const logger = createLogger({ level: config.logLevel });
  // Loaded here only: `ferry push` / `status` never load the roles (bullmq, fastify, …).
  const { serve } = require('./serve') as typeof import('./serve');
  const code = await serve(roles, config, logger);
  // Every role has been closed (or abandoned at the deadline): a handle left open must not keep us alive.
  setTimeout(() => process.exit(code), 2_000).unref();
  return code;
}

export function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  const program = new Command('ferry')
    .description('Push container images to OCI / Docker v2 registries through a Ferry server')
    .version('0.1.0')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: (s, write) =>
        write(`ferry: FERRY_USAGE: ${s.replace(/^error: /, '').trim()} (see ferry --help)\n`),
    });

  serverOptions(
    program
      .command('push')
      .description(
        'push SOURCE (oci:PATH[:REF], docker-archive:PATH[:REF], dir:PATH, docker://HOST[:PORT]/REPO[:TAG|@DIGEST]) to TARGET (HOST[:PORT]/REPO[:TAG]); several TARGETs fan the push out',
      )
      .argument('<source>')
      .argument('<target...>')
      .option('-t, --tag <tag>', 'an extra tag (repeatable)', collect, [])
      .option('--sign', 'sign with every key the server has')
      .option('--schema1', 'push a legacy signed schema1 manifest')
      .addOption(new Option('--format <format>', 'manifest format').choices(['oci', 'docker']))
      .option('--platform <os/arch>', 'push one platform of a multi-platform source')
      .addOption(
        new Option(
          '--owners <mode>',
          "dir: layers: uid/gid 0 (root, the default) or each file's numeric uid/gid (keep)",
        ).choices(['root', 'keep']),
      )
      .addOption(
        new Option(
          '--mtime <mtime>',
          "dir: layers: mtime 0 (epoch, the default), each file's mtime (keep) or SECONDS",
        ).argParser(parseMtime),
      )
      .option('--all-tags', 'docker:// source without a tag: copy every tag of the repository')
      .option('--no-signatures', "docker:// source: do not copy the source's cosign signatures")
      .option('--json', 'one JSON object per event on stdout, the last one the final status')
      .option('--no-wait', 'print the push id and return at once')
      .option(
        '--cancel-on-interrupt',
        'Ctrl-C cancels the push (by default the push goes on on the server)',
      ),
  ).action(async (source: string, targets: string[], opts: PushOpts) =>
    setExit(await push(source, targets, opts, io)),
  );

  serverOptions(
    program
      .command('status')
      .description('show a push')
      .argument('<id>')
      .option('--json', 'print the state as JSON'),
  ).action(async (id: string, opts: ServerOpts) => setExit(await status(id, opts, io)));

  serverOptions(
    program
      .command('cancel')
      .description('cancel a push')
      .argument('<id>')
      .option('--json', 'print the answer as JSON'),
  ).action(async (id: string, opts: ServerOpts) => setExit(await cancel(id, opts, io)));

  program
    .command('serve')
    .description('run Ferry roles in this process (all by default)')
    .addOption(new Option('--role <role>', 'which role').choices(['all', ...ROLES]).default('all'))
    .action(async (opts: { role: string }) => setExit(await runServe(opts.role, io)));

  program
    .command('keygen')
    .description(
      'write a new signing key pair into DIR: EC P-256 cosign.key (0600) and cosign.pub; --rsa: an RSA key with a self-signed certificate (schema1.key, .pub, .crt)',
    )
    .requiredOption(
      '--out <dir>',
      'where to write the keys (created if missing; existing files are never overwritten)',
    )
    .option('--rsa', 'an RSA 3072 key and a self-signed X.509 certificate (schema1 x5c) instead')
    .action(async (opts: KeygenOpts) => setExit(await signingCommands().keygen(opts, io)));
  program
    .command('verify')
    .description(
      'verify the cosign signatures of TARGET (HOST[:PORT]/REPO[:TAG|@DIGEST]) in its registry with a public key; exit 0 when at least one verifies (credentials: $FERRY_DOCKER_CONFIG or ~/.docker/config.json)',
    )
    .argument('<target>')
    .requiredOption('--key <pub>', 'PEM public key (cosign.pub) or certificate')
    .option('--json', 'print the result as one JSON object')
    .action(async (target: string, opts: VerifyOpts) =>
      setExit(await signingCommands().verify(target, opts, io)),
    );
  return program;
}

/** Runs the ferry command line; resolves with the exit status. Errors become one line: `ferry: CODE: message`. */
export async function main(argv: string[], io: Partial<CliIo> = {}): Promise<number> {
  const full: CliIo = {
    stdout: io.stdout ?? process.stdout,
    stderr: io.stderr ?? process.stderr,
    env: io.env ?? process.env,
    cwd: io.cwd ?? process.cwd(),
    onInterrupt: io.onInterrupt,
  };
  let code = 0;
  const program = buildProgram(full, (c) => (code = c));
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.version' ||
        err.code === 'commander.help'
      )
        return 0;
      return 2;
    }
    const e = err as { code?: unknown; message?: string; exitCode?: number };
    const codeStr = typeof e.code === 'string' ? e.code : 'FERRY_ERROR';
    const message = (e.message ?? String(err)).replace(/\s+/g, ' ').trim();
    full.stderr.write(`ferry: ${codeStr}: ${message}\n`);
    return err instanceof CliError ? err.exitCode : 1;
  }
}
