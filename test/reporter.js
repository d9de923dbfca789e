'use strict';
// mocha's spec reporter, plus one plain closing line "N passed, N failed, N skipped"
// that CI systems (and people skimming a log) can read without knowing mocha.
const Mocha = require('mocha');

const { EVENT_RUN_END } = Mocha.Runner.constants;

class FerryReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once(EVENT_RUN_END, () => {
      const s = runner.stats;
      process.stdout.write(`\n${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

module.exports = FerryReporter;
