#!/usr/bin/env bash
# Installs the system packages Ferry's tests and local stack use, only when missing:
# redis-server, docker-registry (CNCF distribution 2.8), skopeo, gpg, and htpasswd
# (apache2-utils: the bcrypt htpasswd file of the basic-auth test registry),
# setcap/getcap (libcap2-bin: the file-capability tests), and what npm needs to
# build image-source's native xattr addon (python3, make, g++), and tmux (the
# CLI's terminal tests drive `ferry push` in a real terminal), and promtool
# (Debian's `prometheus` package: the metrics tests pipe /metrics into
# `promtool check metrics`), and chromium (Debian's browser at /usr/bin/chromium:
# the Bull Board browser test drives it with playwright-core, which ships none),
# and redis-sentinel (the Sentinel end-to-end test starts one next to its own
# redis-server; Redis Cluster needs only redis-server and redis-cli).
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v gpg >/dev/null 2>&1 || need+=(gnupg)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v setcap >/dev/null 2>&1 || [ -x /usr/sbin/setcap ] || need+=(libcap2-bin)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v make >/dev/null 2>&1 || need+=(make)
command -v g++ >/dev/null 2>&1 || need+=(g++)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ferry: missing ${need[*]}; run as root or install them: apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ferry: missing ${need[*]} and no apt-get here; install them with your package manager" >&2
  exit 1
fi
echo "ferry: installing ${need[*]} (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start their own services on the default ports (prometheus
# on :9090, redis-sentinel on :26379 where systemd runs); Ferry never uses those,
# it starts its own on free ports and needs only promtool from the prometheus package. Leave them as the
# system set them.
