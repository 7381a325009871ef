"""The POSIX sh library every script of a phase sources (lib.sh), and shell quoting.

lib.sh holds the phase's constants (its directory, output nonce, command timeout, lock-out
timer's pid file and unit) and the shared functions: the output markers, the command runner,
the restore lock, the lock-out timer's disarm, the phase's abort, file restore, and the raw
readers the snapshot uses (nft tables, sysctls).

Output protocol: lines `@@shoal <nonce> <verb> <args>`; a section (a snapshot or one command's
output) is `begin <name>`, the bytes, then a newline and `end <name> <rc>`. The nonce is random
per phase, so no command output can fake a marker. `reconciler.apply.phaselog` parses it.

Who restores is decided by one atomic `mkdir restore.lock` (`take_lock`): the phase itself on a
failed step, the timer when its deadline passes, the controller's recover script, or the
confirmation, which takes the lock so that no restore runs after it.
"""

from __future__ import annotations

import shlex

from reconciler.apply.host_phase import KILL_GRACE, HostPhase, lockout_pidfile, lockout_unit
from reconciler.plan.steps import Argv


def quote(value: str) -> str:
    return shlex.quote(value)


def command_line(argv: Argv) -> str:
    if not argv:
        raise ValueError("empty command")
    return shlex.join(argv)


LIB = r"""
mark() { printf '@@shoal %s %s\n' "$N" "$*"; }
emit() {
  printf '@@shoal %s begin %s\n' "$N" "$1"
  if [ -f "$3" ]; then cat "$3"; fi
  printf '\n@@shoal %s end %s %s\n' "$N" "$1" "$2"
}
now() { date +%s.%N 2>/dev/null || date +%s; }
# Run one command under `timeout` in the background so an abort can find its process group.
run() {
  _name=$1; shift
  if command -v timeout >/dev/null 2>&1; then
    timeout -k __GRACE__ "$T" "$@" </dev/null >"$B/out/$_name" 2>&1 &
  else
    "$@" </dev/null >"$B/out/$_name" 2>&1 &
  fi
  echo $! >"$B/step.pid"
  wait $!
  _rc=$?
  rm -f "$B/step.pid"
  emit "$_name" "$_rc" "$B/out/$_name"
  return $_rc
}
alive() {
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}
take_lock() { mkdir "$B/restore.lock" 2>/dev/null && echo "$1" >"$B/restore.lock/by"; }
lock_owner() { cat "$B/restore.lock/by" 2>/dev/null || echo none; }
wait_done() {
  _i=0
  while [ ! -e "$B/restore.done" ] && [ "$_i" -lt "$1" ]; do sleep 1; _i=$((_i + 1)); done
  [ -e "$B/restore.done" ]
}
set_deadline() { echo $(( $(date +%s) + $1 )) >"$B/deadline"; }
disarm() {
  _m=$(cat "$B/lockout.mode" 2>/dev/null) || return 0
  case $_m in
    systemd) systemctl stop "$UNIT.timer" "$UNIT.service" >/dev/null 2>&1 ;;
    process)
      _p=$(cat "$PIDFILE" 2>/dev/null)
      if alive "$_p" "$B/lockout.sh"; then kill -TERM -"$_p" 2>/dev/null || kill -TERM "$_p"; fi ;;
  esac
  rm -f "$PIDFILE"
  echo disarmed >"$B/lockout.mode"
  mark lockout disarmed
}
# Stop a phase that is still running (its whole session), and the command it is waiting for.
abort_phase() {
  _p=$(cat "$B/phase.pid" 2>/dev/null)
  if alive "$_p" "$B/phase.sh"; then kill -KILL -"$_p" 2>/dev/null; mark aborted-phase; fi
  _s=$(cat "$B/step.pid" 2>/dev/null)
  if alive "$_s" timeout; then kill -KILL -"$_s" 2>/dev/null; fi
  return 0
}
# A path snapshotted as a symlink (a unit's .wants link) comes back as the same link; a regular
# file byte for byte with its mode; an absent one is removed again.
restore_file() {
  _k=$1; _p=$2; rm -f -- "$3"
  if [ -f "$B/pre/file.$_k.link" ]; then
    _t=$(cat "$B/pre/file.$_k.link")
    if [ -L "$_p" ] && [ "$(readlink -- "$_p")" = "$_t" ]; then
      _rc=0
    else
      rm -f -- "$4" && ln -s -- "$_t" "$4" && mv -fT -- "$4" "$_p"
      _rc=$?
    fi
  elif [ -f "$B/pre/file.$_k" ]; then
    if [ ! -L "$_p" ] && cmp -s "$B/pre/file.$_k" "$_p" &&
      [ "$(stat -c %a -- "$_p")" = "$(stat -c %a -- "$B/pre/file.$_k")" ]; then
      _rc=0
    else
      cp -p -- "$B/pre/file.$_k" "$4" && mv -f -- "$4" "$_p"
      _rc=$?
    fi
  else
    rm -f -- "$_p"
    _rc=$?
  fi
  mark restore-file "$_k" "$_rc"
}
# arptables-nft and iptables-nft create their nft table on first use (the *-save output looks
# the same either way). A table absent before the phase that holds no rule and no non-default
# chain now is the phase's own leftover: drop it.
drop_if_created() {
  [ -f "$B/pre/nft_tables" ] || return 0
  grep -qx "table $1 $2" "$B/pre/nft_tables" && return 0
  nft list table "$1" "$2" >/dev/null 2>&1 || return 0
  _now=$($3 2>/dev/null) || return 0
  printf '%s\n' "$_now" | head -n 1 | grep -q nf_tables || return 0
  printf '%s\n' "$_now" | grep -v '^#' | grep -v '^\*' | grep -v '^COMMIT' | grep -v '^$' |
    grep -Evq '^:(PREROUTING|INPUT|OUTPUT|POSTROUTING|FORWARD) ACCEPT' && return 0
  nft delete table "$1" "$2" && mark dropped-table "$1" "$2"
}
nft_tables() { command -v nft >/dev/null 2>&1 || return 127; nft list tables | sort; }
nft_ours() {
  command -v nft >/dev/null 2>&1 || return 127
  _t=$(nft list tables) || return 1
  printf '%s\n' "$_t" | sort | while read -r _kw _fam _name; do
    case $_name in shoal_*) nft -s list table "$_fam" "$_name" || return 1 ;; esac
  done
}
sysctls() {
  for _k in "$@"; do
    if _v=$(sysctl -n "$_k" 2>/dev/null); then printf '%s=%s\n' "$_k" "$_v"
    else printf '%s!unreadable\n' "$_k"; fi
  done
}
""".replace("__GRACE__", str(KILL_GRACE))


def library(hp: HostPhase) -> str:
    """lib.sh: the phase's constants, then the shared functions."""
    head = (
        f"B={quote(hp.dir)}\nN={hp.nonce}\nT={hp.command_seconds}\n"
        f"PIDFILE={quote(lockout_pidfile(hp.plan_id, hp.phase))}\n"
        f"UNIT={quote(lockout_unit(hp.plan_id, hp.phase))}\n"
        f"LOCKOUT={hp.lockout_timeout or 0}\n"
    )
    return head + LIB
