#!/usr/bin/env bash
# The whole test suite: installs what it needs, type-checks, checks dependency
# direction, lints, then runs every mocha suite against real redis-server,
# docker-registry and skopeo processes started on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install-node-deps.sh
npm run --silent build
npm run --silent lint
npx mocha --config .mocharc.json "$@"
