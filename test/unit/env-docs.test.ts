import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { VARIABLES } from '@ferry/config';

const root = join(__dirname, '..', '..');

function sources(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (name === 'node_modules' || name === 'test') continue;
    if (statSync(p).isDirectory()) sources(p, out);
    else if (p.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('environment variables are documented', () => {
  it('every variable config reads is in the README table', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const missing = VARIABLES.filter((v) => !new RegExp(`^\\| [^|]*\\b${v}\\b`, 'm').test(readme));
    assert.deepEqual(missing, []);
  });

  it('no code reads a FERRY_ variable that config does not know', () => {
    const known = new Set<string>(VARIABLES);
    const unknown: string[] = [];
    for (const dir of ['packages', 'services']) {
      for (const file of sources(join(root, dir))) {
        const text = readFileSync(file, 'utf8');
        for (const m of text.matchAll(
          /process\.env\.(FERRY_[A-Z0-9_]+)|process\.env\[['"](FERRY_[A-Z0-9_]+)['"]\]/g,
        )) {
          const v = m[1] ?? m[2];
          if (!known.has(v)) unknown.push(`${file.slice(root.length + 1)}: ${v}`);
        }
      }
    }
    assert.deepEqual(unknown, []);
  });
});
