#!/usr/bin/env bash
# Installs what shoal's tests and demo need on a Debian 12 machine (run as root), idempotently:
# the system packages the lab uses, and the project's virtual environment from pyproject.toml.
# Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(openssh-server openssh-client arptables iptables nftables iproute2 keepalived
          iputils-arping iputils-ping ipvsadm procps psmisc git curl python3-venv ca-certificates)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package lists may be missing or stale on a fresh machine; refresh only when install fails.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/shoal-apt.log 2>&1 \
    || { apt-get update -q >>/tmp/shoal-apt.log 2>&1 \
         && apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/shoal-apt.log 2>&1; } \
    || { cat /tmp/shoal-apt.log; exit 1; }
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.shoal-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv from pyproject.toml"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
