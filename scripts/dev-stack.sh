#!/usr/bin/env bash
# A local Ferry stack on free ports: redis-server, docker-registry, `ferry serve`.
#   scripts/dev-stack.sh start   start it (state and logs in .ferry/), print its URLs
#   scripts/dev-stack.sh stop    stop what start started, by PID
#   scripts/dev-stack.sh env     print the environment to reach it (eval "$(scripts/dev-stack.sh env)")
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/.ferry"
mkdir -p "$STATE"

http_ok() { node -e 'require("http").get(process.argv[1],r=>process.exit(r.statusCode<400?0:1)).on("error",()=>process.exit(1))' "$1"; }

free_port() { node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! alive "$name"; then echo "ferry: $name exited; see $STATE/$name.log" >&2; tail -5 "$STATE/$name.log" >&2; return 1; fi
    sleep 0.2
  done
  echo "ferry: $name did not answer; see $STATE/$name.log" >&2
  return 1
}

stop_one() {
  local name=$1
  if [ -f "$STATE/$name.pid" ]; then
    local pid; pid=$(cat "$STATE/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$name.pid"
  fi
}

cmd=${1:-start}
case "$cmd" in
  start)
    if alive ferry; then echo "ferry: stack already running (scripts/dev-stack.sh stop first)" >&2; cat "$STATE/env"; exit 0; fi
    REDIS_PORT=$(free_port); REGISTRY_PORT=$(free_port); API_PORT=$(free_port)
    mkdir -p "$STATE/redis" "$STATE/registry"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" --save '' --appendonly no \
      --maxmemory-policy noeviction --daemonize no >"$STATE/redis.log" 2>&1 &
    echo $! >"$STATE/redis.pid"
    cat >"$STATE/registry.yml" <<YML
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $STATE/registry }
  delete: { enabled: true }
http:
  addr: 127.0.0.1:$REGISTRY_PORT
  secret: ferry-dev-stack-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
YML
    docker-registry serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
    echo $! >"$STATE/registry.pid"
    wait_for redis redis-cli -p "$REDIS_PORT" ping
    wait_for registry http_ok "http://127.0.0.1:$REGISTRY_PORT/v2/"
    cat >"$STATE/env" <<ENV
export FERRY_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export FERRY_PORT=$API_PORT
export FERRY_URL=http://127.0.0.1:$API_PORT
export FERRY_SOURCE_ROOT=$PWD
export FERRY_REGISTRY_ALLOW=127.0.0.1:$REGISTRY_PORT,localhost:$REGISTRY_PORT
export FERRY_QUEUE_PREFIX={ferry-dev}
export FERRY_LOG_LEVEL=info
export FERRY_REGISTRY=127.0.0.1:$REGISTRY_PORT
ENV
    # shellcheck disable=SC1091
    . "$STATE/env"
    # The stack runs the compiled JavaScript, as production does.
    [ -f packages/cli/dist/index.js ] || npm run --silent build
    NODE_ENV=production node bin/ferry.js serve >"$STATE/ferry.log" 2>&1 &
    echo $! >"$STATE/ferry.pid"
    wait_for ferry http_ok "http://127.0.0.1:$API_PORT/readyz"
    echo "Ferry stack running (state in .ferry/):" >&2
    echo "  API          http://127.0.0.1:$API_PORT/v1/pushes" >&2
    echo "  Bull Board   http://127.0.0.1:$API_PORT/admin/queues" >&2
    echo "  Metrics      http://127.0.0.1:$API_PORT/metrics" >&2
    echo "  Registry     http://127.0.0.1:$REGISTRY_PORT/v2/" >&2
    echo "  Redis        redis://127.0.0.1:$REDIS_PORT" >&2
    echo "  Environment  eval \"\$(scripts/dev-stack.sh env)\"" >&2
    echo "  Stop         scripts/dev-stack.sh stop" >&2
    ;;
  stop)
    stop_one ferry; stop_one registry; stop_one redis
    echo "ferry: stack stopped" >&2
    ;;
  env)
    cat "$STATE/env"
    ;;
  *)
    echo "usage: scripts/dev-stack.sh start|stop|env" >&2; exit 2 ;;
esac
