#!/usr/bin/env bash
# The README's first command: set up a fresh machine, start a local stack,
# push the sample image with `ferry push`, and show the result with skopeo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install-node-deps.sh
# Ferry runs compiled JavaScript (dist/), as in production.
npm run --silent build
bash scripts/dev-stack.sh start
# shellcheck disable=SC1091
. .ferry/env
TARGET="$FERRY_REGISTRY/demo/hello:1.0"
echo "+ ferry push dir:examples/hello $TARGET --tag latest" >&2
DIGEST=$(node bin/ferry.js push dir:examples/hello "$TARGET" --tag latest | tail -1)
echo "+ skopeo inspect --tls-verify=false docker://$TARGET" >&2
skopeo inspect --tls-verify=false "docker://$TARGET"
echo >&2
echo "Pushed $TARGET as $DIGEST" >&2
echo "The stack is still running: Bull Board at $FERRY_URL/admin/queues; stop it with scripts/dev-stack.sh stop" >&2
