#!/usr/bin/env node
'use strict';
// Ferry runs compiled JavaScript: `npm run build` writes each package's dist/.
// (Tests and scripts run the TypeScript sources instead, through tsx with the
// `ferry-source` export condition.)
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const fromSource = process.execArgv
  .concat(process.env.NODE_OPTIONS || '')
  .some((a) => /ferry-source/.test(a));
if (!fromSource && !existsSync(join(__dirname, '..', 'packages', 'cli', 'dist', 'index.js'))) {
  process.stderr.write(
    'ferry: FERRY_NOT_BUILT: the compiled JavaScript is missing (packages/cli/dist); run npm run build\n',
  );
  process.exit(1);
}
const { main } = require('@ferry/cli');

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`ferry: FERRY_ERROR: ${err && err.message ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
