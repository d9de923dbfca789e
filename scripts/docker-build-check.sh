#!/usr/bin/env bash
# Runs deploy/Dockerfile's build outside Docker (no engine on our machines), so
# a broken step is caught anyway:
#   1. a clean copy of what the build stage COPYs (tracked and unignored files
#      only: no node_modules, no dist/), in a temporary /app;
#   2. the build stage's RUN steps, word for word (apt-get lines skipped: the
#      machine has its compiler), with /out under the temporary directory;
#   3. the final stage's content (/out) checked: `node bin/ferry.js --help`
#      works there, tsx (a devDependency) cannot be resolved, no TypeScript
#      sources, tests or build info are in it, and every role's package and
#      the CLI load (with the native fs-xattr).
# Usage: scripts/docker-build-check.sh [--keep]   (--keep leaves the copy)
# npm uses its cache first (npm_config_prefer_offline), as CI runs it often.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dockerfile="$repo/deploy/Dockerfile"
keep=0
[ "${1:-}" = "--keep" ] && keep=1

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-docker-build.XXXXXX")
cleanup() { if [ "$keep" = 1 ]; then echo "docker-build-check: kept $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT
app="$work/app"
out="$work/out"
mkdir -p "$app"

# The build stage: from its FROM line to the next FROM. Continuation lines joined.
steps=$(awk '
  /^FROM / { n++ }
  n == 1 && !/^FROM / && !/^[[:space:]]*#/ {
    line = $0
    if (sub(/\\[[:space:]]*$/, "", line)) { buf = buf line; next }
    print buf line; buf = ""
  }' "$dockerfile")
[ -n "$steps" ] || { echo "docker-build-check: no build stage in $dockerfile" >&2; exit 1; }

# What the context holds: the files git tracks or would track (never node_modules or dist/).
mapfile -t context < <(cd "$repo" && git ls-files --cached --others --exclude-standard)

copy_into_app() { # SRC... DEST (Dockerfile COPY, relative to the context and WORKDIR)
  local args=("$@") dest=${args[-1]}
  unset 'args[-1]'
  for src in "${args[@]}"; do
    local matched=0
    for f in "${context[@]}"; do
      if [ "$f" = "$src" ] || [[ "$f" == "$src"/* ]]; then
        [ -e "$repo/$f" ] || continue
        matched=1
        local rel=$f target
        if [ "$f" != "$src" ]; then rel=${f#"$src"/}; fi
        if [[ "$dest" == */ ]] || [ "$dest" = "." ] || [ "$dest" = "./" ]; then
          if [ "$f" = "$src" ]; then target="$app/${dest%/}/$(basename "$f")"; else target="$app/${dest%/}/$(basename "$src")/$rel"; fi
        else
          if [ "$f" = "$src" ]; then target="$app/$dest"; else target="$app/$dest/$rel"; fi
        fi
        mkdir -p "$(dirname "$target")"
        cp -p "$repo/$f" "$target"
      fi
    done
    [ "$matched" = 1 ] || { echo "docker-build-check: COPY $src: nothing in the build context" >&2; exit 1; }
  done
}

export npm_config_prefer_offline=true npm_config_update_notifier=false
while IFS= read -r step; do
  case "$step" in
    '' ) ;;
    WORKDIR*|ENV*|ARG*|LABEL*) ;;
    COPY\ --from=*) echo "docker-build-check: multi-stage COPY in the build stage is not supported: $step" >&2; exit 1 ;;
    COPY\ *)
      # shellcheck disable=SC2086
      read -r -a words <<<"${step#COPY }"
      echo "+ COPY ${words[*]}" >&2
      copy_into_app "${words[@]}"
      ;;
    RUN\ *)
      cmd=${step#RUN }
      if [[ "$cmd" == *apt-get* ]]; then echo "+ (skipped, system packages) RUN $cmd" >&2; continue; fi
      cmd=${cmd//\/out/$out}
      echo "+ RUN $cmd" >&2
      (cd "$app" && sh -c "$cmd") || { echo "docker-build-check: step failed: RUN $cmd" >&2; exit 1; }
      ;;
    *) echo "docker-build-check: unhandled build-stage instruction: $step" >&2; exit 1 ;;
  esac
done <<<"$steps"

# The final stage copies $out to /app: check what it would run.
[ -f "$out/bin/ferry.js" ] || { echo "docker-build-check: $out/bin/ferry.js missing" >&2; exit 1; }
clean_env=(env -i "PATH=$PATH" "HOME=${HOME:-/tmp}" NODE_ENV=production NODE_OPTIONS=--max-semi-space-size=2)
if ! help=$(cd "$out" && "${clean_env[@]}" node bin/ferry.js --help 2>&1); then
  echo "docker-build-check: node bin/ferry.js --help failed in the final stage:" >&2
  echo "$help" >&2
  exit 1
fi
grep -q 'serve' <<<"$help" || { echo "docker-build-check: --help does not mention serve:" >&2; echo "$help" >&2; exit 1; }
# Every role's package and the CLI load from dist/, with what they import (fs-xattr's native addon too).
if ! loaded=$(cd "$out" && "${clean_env[@]}" node -e '
  const fs = require("fs");
  for (const dir of [...fs.readdirSync("services").map((d) => `services/${d}`), "packages/cli"]) {
    require(JSON.parse(fs.readFileSync(`${dir}/package.json`, "utf8")).name);
  }
  require("fs-xattr");
  console.log("loaded");' 2>&1); then
  echo "docker-build-check: a workspace package does not load in the final stage:" >&2
  echo "$loaded" >&2
  exit 1
fi
if (cd "$out" && "${clean_env[@]}" node -e "require.resolve('tsx')" >/dev/null 2>&1); then
  echo "docker-build-check: tsx (a devDependency) resolves in the final stage" >&2
  exit 1
fi
leftovers=$(cd "$out" && find . -path ./node_modules -prune -o \( -name '*.ts' ! -name '*.d.ts' -o -name '*.tsbuildinfo' -o -name src -o -name test \) -print | head -5)
if [ -n "$leftovers" ]; then
  echo "docker-build-check: sources in the final stage: $leftovers" >&2
  exit 1
fi
echo "docker-build-check: ok (build stage ran; final stage: ferry --help works, no tsx, no sources)"
