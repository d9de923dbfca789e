#!/usr/bin/env bash
# The whole test suite: installs what it needs, type-checks, checks dependency
# direction, lints, then runs every mocha suite against real redis-server,
# docker-registry and skopeo processes started on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install-node-deps.sh
npm run --silent build
# The whole tree, tests and scripts included (build compiles only the packages' src).
npm run --silent typecheck
npm run --silent lint
npx mocha --config .mocharc.json --ignore 'test/faults/**' "$@"
# The fault suite (test/faults, issue 9): its own mocha config and timeouts, CI sizes
# (FERRY_FAULTS_FULL=1: full sizes; FERRY_FAULTS_SEED=N replays a run). Skipped when
# the caller names spec files.
if [ $# -eq 0 ]; then
  npx mocha --config test/faults/mocharc.json
fi
