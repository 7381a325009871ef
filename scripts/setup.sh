#!/usr/bin/env bash
# Installs what shoal's tests and demo need on a Debian 12 machine (run as root), idempotently:
# the system packages the lab uses (with --tests also those only the tests use), and the
# project's virtual environment from requirements.lock.
# Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(openssh-server openssh-client arptables iptables nftables iproute2 keepalived
          iputils-arping iputils-ping ipvsadm procps psmisc git curl python3-venv ca-certificates
          qemu-system-x86 busybox-static kmod sudo ndisc6)

# `setup.sh --tests` (make test): also what only the tests use. Debian's Chromium is the browser
# the web pages' browser test drives (tests/lab/test_web_browser.py); PostgreSQL 15 the server the
# store tests start on a socket of their own (tests/support/postgres.py: its binaries only; the
# cluster the package may make and start is never used). The demo needs neither.
TEST_PACKAGES=(chromium postgresql)
[ "${1:-}" != "--tests" ] || PACKAGES+=("${TEST_PACKAGES[@]}")

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

# The IPVS director VM (lab/vm.py) boots Debian's kernel, which has IPVS (this machine's may not).
# The package is unpacked into .cache/kernel, never installed: installing would pull
# initramfs-tools, udev and a systemd upgrade into the machine, none of which the VM needs.
KERNEL_ROOT=.cache/kernel/root
if ! compgen -G "$KERNEL_ROOT/boot/vmlinuz-*" >/dev/null; then
  echo "setup: unpacking Debian's kernel into $KERNEL_ROOT (for the IPVS director VM)"
  rm -rf .cache/kernel && mkdir -p .cache/kernel/deb && chmod 0755 .cache .cache/kernel
  # linux-image-amd64 names the current ABI package (linux-image-6.1.0-N-amd64). Stale or
  # missing package lists give no name or one the mirror no longer has: refresh, then retry.
  fetch_kernel() {
    rm -f .cache/kernel/deb/*.deb
    abi=$(apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$abi" ] && (cd .cache/kernel/deb && apt-get download -q "$abi") >>/tmp/shoal-apt.log 2>&1
  }
  : >/tmp/shoal-apt.log
  fetch_kernel || { apt-get update -q >>/tmp/shoal-apt.log 2>&1 && fetch_kernel; } \
    || { cat /tmp/shoal-apt.log; echo "setup: could not download Debian's kernel" >&2; exit 1; }
  dpkg-deb -x .cache/kernel/deb/*.deb "$KERNEL_ROOT.new"
  kver=$(basename "$(compgen -G "$KERNEL_ROOT.new/lib/modules/*" | head -n 1)")
  depmod -b "$KERNEL_ROOT.new" "$kver"
  rm -rf .cache/kernel/deb
  mv "$KERNEL_ROOT.new" "$KERNEL_ROOT"  # last: its presence means "complete"
fi

# The virtual environment holds exactly requirements.lock (every version pinned, every file
# checked against its sha256), then shoal itself without resolving anything (`make lock`
# regenerates the lock from pyproject.toml's ranges). The stamp hashes both files: a change to
# either reinstalls; a package the lock no longer lists is removed.
PYTHON=${PYTHON:-python3}
stamp=.venv/.shoal-installed
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing .venv from requirements.lock"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  pip_log=/tmp/shoal-pip.log
  pip() { .venv/bin/pip "$@" >>"$pip_log" 2>&1 || { cat "$pip_log"; exit 1; }; }
  : >"$pip_log"
  pip install -q --require-hashes --no-deps -r requirements.lock
  pip install -q --no-deps --no-build-isolation -e .
  extra=$(.venv/bin/python scripts/lock_extra.py requirements.lock)
  # shellcheck disable=SC2086 # one name per word, from pip's own list
  [ -z "$extra" ] || pip uninstall -q -y $extra
  echo "$want" > "$stamp"
fi
