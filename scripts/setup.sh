#!/usr/bin/env bash
# `npm run setup`: everything Ferry needs on this machine — system packages
# (redis-server, docker-registry, skopeo, ...), node modules, and the compiled
# JavaScript (dist/) that bin/ferry.js runs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install-node-deps.sh
npm run --silent build
echo "ferry: set up; start a local stack with scripts/dev-stack.sh start, or run npx ferry serve" >&2
