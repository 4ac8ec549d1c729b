#!/usr/bin/env bash
# Install the peer servers used by bench/run.py into bench/.peers/ (git-ignored).
# Idempotent: each peer is reinstalled only when its stamp file is missing or
# records different pinned versions. Safe to re-run.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="$BENCH_DIR/.peers"
PYTHON="${PYTHON:-python3}"
mkdir -p "$PEERS"

# Pinned versions (change here, re-run to upgrade).
TUS_NODE_SERVER="@tus/server@2.4.5"
TUS_NODE_FILE_STORE="@tus/file-store@2.1.1"
TUSPYSERVER_PKGS=("tuspyserver==4.4.3" "fastapi" "uvicorn[standard]==0.54.0")
# aiohttp-tus 1.1.0 (last release, 2022) declares aiohttp>=3.8.1,<4; the newest
# 3.x works with it, so it gets its own venv to keep its pin apart from ours.
AIOHTTP_TUS_PKGS=("aiohttp-tus==1.1.0" "aiohttp>=3.8.1,<4")
# The sampling profiler bench/profile.py --py-spy runs (a binary wheel; its own venv).
PY_SPY_PKGS=("py-spy==0.4.3")

stamp_ok() {  # stamp_ok <stamp-file> <expected-content>
  [[ -f "$1" ]] && [[ "$(cat "$1")" == "$2" ]]
}

install_venv() {  # install_venv <name> <packages...>
  local name="$1"; shift
  local dir="$PEERS/$name"
  local want="$*"
  if stamp_ok "$dir/.stamp" "$want" && [[ -x "$dir/bin/python" ]]; then
    echo "setup: $name already installed ($want)"
    return
  fi
  echo "setup: installing $name ($want)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  printf '%s' "$want" > "$dir/.stamp"
}

install_node() {
  local dir="$PEERS/node"
  local want="$TUS_NODE_SERVER $TUS_NODE_FILE_STORE"
  if stamp_ok "$dir/.stamp" "$want" && [[ -d "$dir/node_modules/@tus/server" ]] \
      && [[ -d "$dir/node_modules/@tus/file-store" ]]; then
    echo "setup: node peer already installed ($want)"
    return
  fi
  command -v node >/dev/null || { echo "setup: node not found" >&2; exit 1; }
  echo "setup: installing node peer ($want)"
  rm -rf "$dir"
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    "$TUS_NODE_SERVER" "$TUS_NODE_FILE_STORE"
  printf '%s' "$want" > "$dir/.stamp"
}

install_node
install_venv tuspyserver "${TUSPYSERVER_PKGS[@]}"
install_venv aiohttp-tus "${AIOHTTP_TUS_PKGS[@]}"
install_venv py-spy "${PY_SPY_PKGS[@]}"

echo "setup: versions"
node -e "for (const p of ['@tus/server','@tus/file-store']) { \
  const m = require('$PEERS/node/node_modules/' + p + '/package.json'); \
  console.log('  ' + m.name + ' ' + m.version) }"
"$PEERS/tuspyserver/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -Ei '^(tuspyserver|fastapi|uvicorn|starlette|uvloop|httptools) ' | sed 's/^/  /'
"$PEERS/aiohttp-tus/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -Ei '^(aiohttp-tus|aiohttp) ' | sed 's/^/  /'
echo "setup: done"
