#!/usr/bin/env node
'use strict';
// Ferry runs its TypeScript through tsx (no build step): register it, then run the CLI.
require('tsx/cjs');
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
