#!/usr/bin/env node
// Checks that dependencies point one way: services -> packages, never back;
// the library packages (registry-client, image-source, manifest, signing)
// import no queue and no HTTP server; no cycle among workspace packages; and
// every workspace declares in its package.json `dependencies` each package its
// src imports (Node built-ins aside), so each can be installed on its own.
// Exits non-zero naming every offending import.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(process.argv[2] || path.join(__dirname, '..'));
const LIBRARIES = new Set(['registry-client', 'image-source', 'manifest', 'signing']);
const LIBRARY_FORBIDDEN = [
  /^bullmq$/,
  /^ioredis$/,
  /^fastify/,
  /^@fastify\//,
  /^@bull-board\//,
  /^prom-client$/,
  /^@ferry\/(queue|cli|config)$/,
];
const SERVER_CALL = /\b(?:http2?|https|net)\.createServer\b|\bcreateServer\s*\(/;
const BUILTINS = new Set(require('node:module').builtinModules);

/** The package an import specifier names: 'a/b' -> 'a', '@s/a/b' -> '@s/a'. */
function packageOf(spec) {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function isBuiltin(spec) {
  return spec.startsWith('node:') || BUILTINS.has(packageOf(spec));
}

/** Everything a workspace's package.json lets it import. */
function declaredOf(dir) {
  let pkg = {};
  try {
    pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  } catch (e) {
    problems.push(`${path.relative(root, dir)}/package.json: unreadable (${e.message})`);
  }
  return new Set(
    ['dependencies', 'peerDependencies', 'optionalDependencies'].flatMap((f) =>
      Object.keys(pkg[f] || {}),
    ),
  );
}

function walk(dir, out = []) {
  if (!fs.existsSync(dir)) return out;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (/\.(ts|js|mjs|cjs)$/.test(e.name) && !/\.d\.ts$/.test(e.name)) out.push(p);
  }
  return out;
}

function importsOf(file) {
  const text = fs.readFileSync(file, 'utf8');
  const specs = new Set();
  const re =
    /(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\s*\(\s*['"]([^'"]+)['"]\s*\)|require\(\s*['"]([^'"]+)['"]\s*\)|^\s*import\s+['"]([^'"]+)['"]/gm;
  let m;
  while ((m = re.exec(text))) specs.add(m[1] || m[2] || m[3] || m[4]);
  return { specs: [...specs], text };
}

const problems = [];
const units = [];
for (const kind of ['packages', 'services']) {
  const base = path.join(root, kind);
  if (!fs.existsSync(base)) continue;
  for (const name of fs.readdirSync(base)) {
    if (fs.existsSync(path.join(base, name, 'package.json')))
      units.push({ kind, name, dir: path.join(base, name) });
  }
}
const byPkg = new Map(units.map((u) => [`@ferry/${u.name}`, u]));
const graph = new Map();

for (const u of units) {
  const edges = new Set();
  const declared = declaredOf(u.dir);
  const undeclared = new Set();
  for (const file of walk(path.join(u.dir, 'src'))) {
    const rel = path.relative(root, file);
    const { specs, text } = importsOf(file);
    for (const s of specs) {
      if (!s.startsWith('.') && !isBuiltin(s) && !declared.has(packageOf(s))) {
        const name = packageOf(s);
        if (!undeclared.has(name)) {
          undeclared.add(name);
          problems.push(
            `${rel}: imports ${name}, which ${u.kind}/${u.name}/package.json does not declare in dependencies`,
          );
        }
      }
      if (s.startsWith('.')) {
        const target = path.resolve(path.dirname(file), s);
        if (!target.startsWith(u.dir + path.sep) && target !== u.dir) {
          problems.push(`${rel}: relative import ${s} leaves its package; import it by name`);
        }
        continue;
      }
      const dep = byPkg.get(s.split('/').slice(0, 2).join('/'));
      if (dep) {
        edges.add(dep.name);
        if (u.kind === 'packages' && dep.kind === 'services') {
          problems.push(
            `${rel}: package ${u.name} imports service ${dep.name} (services -> packages only)`,
          );
        }
      }
      if (
        u.kind === 'packages' &&
        LIBRARIES.has(u.name) &&
        LIBRARY_FORBIDDEN.some((r) => r.test(s))
      ) {
        problems.push(
          `${rel}: library package ${u.name} may not import ${s} (no queue, no HTTP server)`,
        );
      }
    }
    if (u.kind === 'packages' && LIBRARIES.has(u.name) && SERVER_CALL.test(text)) {
      problems.push(`${rel}: library package ${u.name} starts a server`);
    }
  }
  graph.set(u.name, edges);
}

// cycle detection (DFS with colours)
const colour = new Map();
const stack = [];
function visit(n) {
  colour.set(n, 1);
  stack.push(n);
  for (const m of graph.get(n) || []) {
    if (colour.get(m) === 1)
      problems.push(`cycle: ${[...stack.slice(stack.indexOf(m)), m].join(' -> ')}`);
    else if (!colour.get(m)) visit(m);
  }
  stack.pop();
  colour.set(n, 2);
}
for (const n of graph.keys()) if (!colour.get(n)) visit(n);

if (problems.length) {
  console.error('dependency check failed:\n  ' + problems.join('\n  '));
  process.exit(1);
}
console.log(`dependency check: ${units.length} workspaces, dependencies point one way`);
