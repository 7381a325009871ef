#!/usr/bin/env bash
# Regenerates requirements.lock (`make lock`): exact versions with sha256 hashes of the runtime
# dependencies, the dev extra and the install tools (scripts/lock-tools.in), for CPython 3.11 on
# Linux x86_64, from pyproject.toml's ranges. The lock already there is the resolver's
# preference, so only what must move moves; `make lock UPGRADE=1` takes the newest that fit.
# uv runs from a throwaway virtual environment, removed afterwards: it is not a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "uv==$UV_VERSION" >"$tmp/pip.log" 2>&1 || { cat "$tmp/pip.log"; exit 1; }
args=(pip compile --quiet pyproject.toml scripts/lock-tools.in --extra dev --generate-hashes
      --python-version 3.11 --python-platform x86_64-unknown-linux-gnu -o requirements.lock)
[ -z "${UPGRADE:-}" ] || args+=(--upgrade)
"$tmp/venv/bin/uv" "${args[@]}"
