"""The POSIX sh scripts the executor runs on a host (pure: text in, text out).

One phase on one host is ONE script sent over ONE SSH channel (`sh -s`). The script first writes
its helpers into the phase's backup directory, /var/lib/shoal/backups/<plan-id>/<phase>/, so
that everything the host needs to undo the phase lives on the host:

    lib.sh        shared functions (markers, command runner, locks, lock-out timer)
    snapshot.sh   raw snapshot of every subsystem the phase touches, into pre/ or post/
    restore.sh    the undo of every started step in reverse, then managed files from pre/
    phase.sh      snapshot, arm the lock-out timer, run the steps; on failure restore itself
    lockout.sh    the lock-out timer: waits for its deadline, then stops the phase and restores

The phase runs in its own session (`setsid -w`) with its output in phase.log, so a lost SSH
channel neither kills it nor blocks it on a full pipe; the channel only prints the log at the
end. Every later script (confirm, rollback, recover) reads the same directory, so a controller
that restarts can still find out what happened.

Who restores is decided by one atomic `mkdir restore.lock`: the phase itself on a failed step,
the timer when its deadline passes, the controller's recover script, or the confirmation, which
takes the lock so that no restore runs after it.

Output protocol: lines `@@shoal <nonce> <verb> <args>`; a section (a snapshot or one command's
output) is `begin <name>`, the bytes, then a newline and `end <name> <rc>`. The nonce is random
per phase, so no command output can fake a marker. `reconciler.apply.phaselog` parses it.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.plan.steps import Argv, Phase, Step

STATE_DIR = "/var/lib/shoal"
BACKUP_ROOT = f"{STATE_DIR}/backups"

# Changes that can cut the controller off from the host; a phase touching one arms the timer.
LOCKOUT_SUBSYSTEMS = frozenset({"arp", "addr", "nft", "iptables", "sysctl"})

_PLAN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NONCE_RE = re.compile(r"^[0-9a-f]{8,64}$")
_SYSCTL_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_MODE_RE = re.compile(r"^[0-7]{3,4}$")
_SYSCTL_CONF_RE = re.compile(r"^\s*-?\s*([A-Za-z0-9_][A-Za-z0-9_./-]*)\s*=")
_ABS_PATH_RE = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,250}$")
# `systemctl enable` links a unit into the target its [Install] names; shoal's units (and the
# service states) use multi-user.target, whose link is what the facts read too.
WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"
_UNIT_LINK_VERBS = frozenset({"enable", "disable", "reenable"})
# Backup directories kept per host (/var/lib/shoal/backups/<plan-id>), newest first.
KEEP_BACKUPS = 10

# Exit statuses of `timeout`: timed out, or killed after the grace period.
TIMEOUT_STATUSES = frozenset({124, 137})
KILL_GRACE = 2  # seconds between TERM and KILL for a timed-out command
SNAPSHOT_BUDGET = 30.0  # seconds a snapshot may take, for the transport timeout


def phase_key(phase: Phase) -> str:
    """The phase's directory name, e.g. "20-real_servers_prepare"."""
    return f"{int(phase)}-{phase.name.lower()}"


def phase_dir(plan_id: str, phase: Phase) -> str:
    if not _PLAN_ID_RE.match(plan_id):
        raise ValueError(f"plan id {plan_id!r} cannot name a directory")
    return f"{BACKUP_ROOT}/{plan_id}/{phase_key(phase)}"


def lockout_pidfile(plan_id: str, phase: Phase) -> str:
    return f"{STATE_DIR}/lockout-{plan_id}-{phase_key(phase)}.pid"


def lockout_unit(plan_id: str, phase: Phase) -> str:
    return f"shoal-lockout-{plan_id}-{int(phase)}"


# --- what a phase touches ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotTargets:
    """The raw outputs a phase's snapshot holds. `interfaces` None: no addresses; () : all."""

    arptables: bool = False
    iptables_tables: tuple[str, ...] = ()  # e.g. ("nat",): one `iptables-save -t T` each
    nft: bool = False
    ipvs: bool = False
    interfaces: tuple[str, ...] | None = None
    sysctls: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def section_names(self) -> tuple[str, ...]:
        """Section names of one snapshot (without the pre./post. prefix)."""
        names: list[str] = []
        if self.arptables:
            names.append("arptables")
        names.extend(f"iptables_{t}" for t in self.iptables_tables)
        if self.nft:
            names.append("nft")
        if self.nft or self.arptables or self.iptables_tables:
            names.append("nft_tables")
        if self.ipvs:
            names.append("ipvs")
        if self.interfaces is not None:
            names.extend(
                [f"addr.{i}" for i in range(len(self.interfaces))] if self.interfaces else ["addr"]
            )
        if self.sysctls:
            names.append("sysctl")
        names.extend(f"file.{k}" for k in range(len(self.files)))
        return tuple(names)


def _basename(arg: str) -> str:
    return posixpath.basename(arg)


def _sysctl_keys(argv: Argv) -> list[str]:
    keys: list[str] = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            continue
        key = arg.split("=", 1)[0]
        prev = args[i - 1] if i else ""
        # `sysctl -p FILE` names a file, not a key.
        if prev in ("-p", "--load") or key.startswith("/"):
            continue
        if _SYSCTL_KEY_RE.match(key):
            keys.append(key.replace("/", "."))
    return keys


def _interfaces(argv: Argv) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv[:-1]):
        if arg == "dev" and _IFNAME_RE.match(argv[i + 1]):
            out.append(argv[i + 1])
    return out


def _iptables_table(argv: Argv) -> str:
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-t", "--table") and _IFNAME_RE.match(argv[i + 1]):
            return argv[i + 1]
    return "filter"


def _removed_paths(argv: Argv) -> list[str]:
    """The files `rm` would remove (absolute paths only, as every state writes them)."""
    args = argv[1:]
    if "--" in args:
        args = args[args.index("--") + 1 :]
    else:
        args = tuple(a for a in args if not a.startswith("-"))
    return [a for a in args if _ABS_PATH_RE.match(a)]


def _unit_links(argv: Argv) -> list[str]:
    """The `multi-user.target.wants` links `systemctl enable|disable UNIT...` adds or removes."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if not words or words[0] not in _UNIT_LINK_VERBS:
        return []
    return [f"{WANTS_DIR}/{u}" for u in words[1:] if _UNIT_RE.match(u)]


def command_files(argv: Argv) -> list[str]:
    """Paths a command creates or deletes outside the step's FileWrites (snapshotted too)."""
    if not argv:
        return []
    tool = _basename(argv[0])
    if tool == "rm":
        return _removed_paths(argv)
    if tool == "systemctl":
        return _unit_links(argv)
    return []


def snapshot_targets(steps: Iterable[Step]) -> SnapshotTargets:
    """Every subsystem, interface, sysctl and file the steps can change."""
    subsystems: set[str] = set()
    interfaces: list[str] = []
    sysctls: list[str] = []
    files: list[str] = []
    ipt_tables: list[str] = []
    for step in steps:
        subsystems.add(step.subsystem)
        for argv in (*step.commands, *step.undo):
            if not argv:
                continue
            files.extend(command_files(argv))
            tool = _basename(argv[0])
            if tool == "sysctl":
                sysctls.extend(_sysctl_keys(argv))
                subsystems.add("sysctl")
            elif tool == "ip":
                interfaces.extend(_interfaces(argv))
            elif tool.startswith("arptables"):
                subsystems.add("arp")
            elif tool.startswith("iptables"):
                subsystems.add("iptables")
                ipt_tables.append(_iptables_table(argv))
            elif tool == "nft":
                subsystems.add("nft")
            elif tool == "ipvsadm":
                subsystems.add("ipvs")
        for write in step.writes:
            files.append(write.path)
            if write.path.startswith("/etc/sysctl.d/") or write.path == "/etc/sysctl.conf":
                for line in write.content.splitlines():
                    m = _SYSCTL_CONF_RE.match(line)
                    if m:
                        sysctls.append(m.group(1).replace("/", "."))
        if step.drain is not None:
            subsystems.add("ipvs")
    wants_addr = "addr" in subsystems or bool(interfaces)
    return SnapshotTargets(
        arptables="arp" in subsystems,
        iptables_tables=tuple(sorted(set(ipt_tables)))
        or (("nat",) if "iptables" in subsystems else ()),
        nft=bool(subsystems & {"nft", "arp"}),
        ipvs="ipvs" in subsystems,
        interfaces=tuple(dict.fromkeys(interfaces)) if wants_addr else None,
        sysctls=tuple(sorted(set(sysctls))),
        files=tuple(dict.fromkeys(files)),
    )


def needs_lockout(steps: Iterable[Step]) -> bool:
    """A phase that can cut the controller off: ARP, addresses, firewall rules, sysctls."""
    return any(s.subsystem in LOCKOUT_SUBSYSTEMS for s in steps)


# --- the phase ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPhase:
    """One phase on one host, and the limits it runs under."""

    plan_id: str
    phase: Phase
    host: str
    steps: tuple[Step, ...]
    nonce: str
    command_timeout: float = 60.0
    # Seconds before the timer restores an unconfirmed phase; None: no timer.
    lockout_timeout: int | None = None
    # Backup directories (plans) kept on the host, this one included; older ones are pruned.
    keep_backups: int = KEEP_BACKUPS

    def __post_init__(self) -> None:
        if not _NONCE_RE.match(self.nonce):
            raise ValueError("nonce must be lowercase hex")
        if self.keep_backups < 1:
            raise ValueError("keep_backups must be at least 1 (the running plan's own)")
        phase_dir(self.plan_id, self.phase)  # validates the plan id

    @property
    def dir(self) -> str:
        return phase_dir(self.plan_id, self.phase)

    @property
    def targets(self) -> SnapshotTargets:
        return snapshot_targets(self.steps)

    @property
    def command_seconds(self) -> int:
        return max(1, math.ceil(self.command_timeout))

    def step_budget(self, step: Step) -> float:
        """The longest one step can run: every command at its timeout, plus its drain."""
        per_command = self.command_seconds + KILL_GRACE + 1
        drain = math.ceil(step.drain.timeout) + 2 if step.drain else 0
        return per_command * len(step.commands) + len(step.writes) + drain

    def budget(self) -> float:
        """The longest the whole phase script can take: snapshots, steps, a full rollback."""
        steps = sum(self.step_budget(s) for s in self.steps)
        undo = (self.command_seconds + KILL_GRACE + 1) * sum(len(s.undo) for s in self.steps)
        return 3 * SNAPSHOT_BUDGET + steps + undo + 10


def _q(value: str) -> str:
    return shlex.quote(value)


def _cmd(argv: Argv) -> str:
    if not argv:
        raise ValueError("empty command")
    return shlex.join(argv)


_LIB = r"""
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


def _lib(hp: HostPhase) -> str:
    head = (
        f"B={_q(hp.dir)}\nN={hp.nonce}\nT={hp.command_seconds}\n"
        f"PIDFILE={_q(lockout_pidfile(hp.plan_id, hp.phase))}\n"
        f"UNIT={_q(lockout_unit(hp.plan_id, hp.phase))}\n"
        f"LOCKOUT={hp.lockout_timeout or 0}\n"
    )
    return head + _LIB


def _snapshot(hp: HostPhase) -> str:
    t = hp.targets
    lines = [
        f". {_q(hp.dir)}/lib.sh",
        'W=$1; D="$B/$W"; mkdir -p "$D"',
        'snap() { _n=$1; shift; "$@" >"$D/$_n" 2>"$D/$_n.err" </dev/null; '
        'emit "$W.$_n" $? "$D/$_n"; }',
        # External tools run under `timeout` too: a hung tool must not hang the snapshot.
        'if command -v timeout >/dev/null 2>&1; then TO="timeout -k 2 $T"; else TO=; fi',
    ]
    if t.arptables:
        lines.append("snap arptables $TO arptables-save")
    for table in t.iptables_tables:
        lines.append(f"snap iptables_{table} $TO iptables-save -t {_q(table)}")
    if t.nft:
        lines.append("snap nft nft_ours")
    if t.nft or t.arptables or t.iptables_tables:
        lines.append("snap nft_tables nft_tables")
    if t.ipvs:
        lines.append("snap ipvs $TO ipvsadm -Sn")
    if t.interfaces is not None:
        if t.interfaces:
            for i, name in enumerate(t.interfaces):
                lines.append(f"snap addr.{i} $TO ip -j addr show dev {_q(name)}")
        else:
            lines.append("snap addr $TO ip -j addr")
    if t.sysctls:
        lines.append("snap sysctl sysctls " + " ".join(_q(k) for k in t.sysctls))
    for k, path in enumerate(t.files):
        p = _q(path)
        lines.append(
            f'rm -f "$D/file.{k}" "$D/file.{k}.link"\n'
            f'if [ -L {p} ]; then readlink -- {p} >"$D/file.{k}.link" && '
            f'printf \'link %s\\n\' "$(cat "$D/file.{k}.link")" >"$D/file.{k}.meta"\n'
            f'elif [ -f {p} ]; then cp -p -- {p} "$D/file.{k}" && '
            f"printf 'present %s %s\\n' \"$(stat -c %a -- {p})\" "
            f'"$(sha256sum <{p} | cut -d\' \' -f1)" >"$D/file.{k}.meta"\n'
            f'elif [ -e {p} ]; then echo other >"$D/file.{k}.meta"\n'
            f'else echo absent >"$D/file.{k}.meta"; fi\n'
            f'emit "$W.file.{k}" $? "$D/file.{k}.meta"'
        )
    return "\n".join(lines) + "\n"


def _tmp_path(path: str, tag: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.shoal-{tag}")


def _file_index(hp: HostPhase) -> dict[str, int]:
    return {path: k for k, path in enumerate(hp.targets.files)}


def _restore(hp: HostPhase) -> str:
    t = hp.targets
    index = _file_index(hp)
    lines = [f". {_q(hp.dir)}/lib.sh", 'mark rollback-begin "$(lock_owner)"']
    for i in reversed(range(len(hp.steps))):
        step = hp.steps[i]
        body = [f"run u.{i}.{j} {_cmd(argv)}" for j, argv in enumerate(step.undo)]
        paths = [w.path for w in reversed(step.writes)]
        # Files its commands removed or linked (rm -f, systemctl enable/disable): after the
        # undo commands, so the snapshot has the last word, byte for byte.
        paths += [f for argv in reversed(step.commands) for f in command_files(argv)]
        for path in dict.fromkeys(paths):
            k = index[path]
            body.append(
                f"restore_file {k} {_q(path)} {_q(_tmp_path(path, 'new'))} "
                f"{_q(_tmp_path(path, 'old'))}"
            )
        if body:
            lines.append(f'if [ -e "$B/progress/{i}.started" ]; then')
            lines.extend("  " + b for b in body)
            lines.append("fi")
    # After every restore: what must run again with the old files back (Step.after_rollback).
    for i, step in enumerate(hp.steps):
        if step.after_rollback:
            lines.append(f'if [ -e "$B/progress/{i}.started" ]; then')
            lines.extend(
                f"  run r.{i}.{j} {_cmd(argv)}" for j, argv in enumerate(step.after_rollback)
            )
            lines.append("fi")
    if t.arptables:
        lines.append("drop_if_created arp filter arptables-save")
    for table in t.iptables_tables:
        lines.append(f"drop_if_created ip {_q(table)} {_q(f'iptables-save -t {table}')}")
    # Directories a write created, deepest first; rmdir leaves any that are not empty.
    lines.append(
        'if [ -f "$B/progress/dirs" ]; then sort -r "$B/progress/dirs" | '
        'while IFS= read -r _d; do rmdir -- "$_d" 2>/dev/null; done; fi'
    )
    lines.append("mark rollback-end")
    return "\n".join(lines) + "\n"


def _write(i: int, k: int, path: str, content: str, mode: str) -> str:
    if not _MODE_RE.match(mode):
        raise ValueError(f"file mode {mode!r} is not octal")
    if "\n" in path or not path.startswith("/") or "\0" in content:
        raise ValueError(f"cannot write {path!r}")
    head = posixpath.dirname(path)
    ancestors: list[str] = []
    d = head
    while d not in ("/", ""):
        ancestors.append(d)
        d = posixpath.dirname(d)
    tmp = _q(_tmp_path(path, "new"))
    name = f"w.{i}.{k}"
    lines = ['if [ -z "$failed" ]; then']
    if ancestors:
        # Record each directory we create, so the rollback can remove it again.
        lines += [
            "  for _d in " + " ".join(_q(a) for a in reversed(ancestors)) + "; do",
            '    [ -d "$_d" ] || { mkdir -m 0755 -- "$_d" && echo "$_d" >>"$B/progress/dirs"; }',
            "  done",
        ]
    lines += [
        f"  {{ printf '%s' {_q(content)} >{tmp} && chmod {mode} {tmp} && "
        f'mv -f -- {tmp} {_q(path)}; }} >"$B/out/{name}" 2>&1',
        "  _rc=$?",
        f"  [ $_rc -eq 0 ] || rm -f -- {tmp}",
        f'  emit {name} $_rc "$B/out/{name}"',
        f"  [ $_rc -eq 0 ] || {{ failed={i}; frc=$_rc; }}",
        "fi",
    ]
    return "\n".join(lines)


_DRAIN_FLAGS = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service", "fwmark": "-f"}
# IPVS states of a TCP connection whose client has already sent its FIN (or reset it). In Direct
# Routing IPVS sees only the client's half, and such entries stay in InActConn for the state's
# timeout (FIN_WAIT: 2 minutes): they carry nothing a drain must wait for.
_CLOSING_TCP_STATES = "FIN_WAIT|TIME_WAIT|CLOSE|CLOSE_WAIT|LAST_ACK"


def _drain(i: int, step: Step) -> str:
    assert step.drain is not None
    proto, _, service = step.drain.service.partition(" ")
    flag = _DRAIN_FLAGS.get(proto)
    if flag is None or not service:
        raise ValueError(f"cannot drain service {step.drain.service!r}")
    seconds = max(0, math.ceil(step.drain.timeout))
    rs = _q(step.drain.real_server)
    # ActiveConn and InActConn are the 5th and 6th fields of a `->` line of `ipvsadm -Ln`.
    count = (
        f"    _n=$(ipvsadm -Ln {flag} {_q(service)} 2>/dev/null | awk -v rs={rs} "
        "'$1 == \"->\" && $2 == rs { a += $5; s += $5 + $6 } END { print s + 0, a + 0 }')\n"
        '    _a=${_n#* }; _n=${_n%% *}\n'
    )
    if proto == "tcp":
        # Only inactive entries left: count those still opening or open (SYN_RECV, persistence
        # templates) in the connection list; the closing ones are done (see above).
        count += (
            '    if [ "${_a:-0}" -eq 0 ] && [ "${_n:-0}" -gt 0 ]; then\n'
            f"      _n=$(ipvsadm -Lnc 2>/dev/null | awk -v vs={_q(service)} -v rs={rs} "
            f"'$1 == \"TCP\" && $5 == vs && $6 == rs && $3 !~ /^({_CLOSING_TCP_STATES})$/ "
            "{ n++ } END { print n + 0 }')\n"
            "    fi\n"
        )
    return (
        f'if [ -z "$failed" ]; then\n'
        f"  _end=$(( $(date +%s) + {seconds} )); _start=$(date +%s)\n"
        f"  while :; do\n"
        f"{count}"
        f'    [ "${{_n:-0}}" -eq 0 ] && break\n'
        f'    [ "$(date +%s)" -ge "$_end" ] && break\n'
        f"    sleep 1\n"
        f"  done\n"
        f'  mark drain {i} "${{_n:-0}}" $(( $(date +%s) - _start ))\n'
        f"fi"
    )


def _phase(hp: HostPhase) -> str:
    lines = [
        f". {_q(hp.dir)}/lib.sh",
        "trap '' HUP PIPE",
        'echo $$ >"$B/phase.pid"',
        "mark phase-begin $(now)",
        'sh "$B/snapshot.sh" pre',
        "failed=",
        "frc=0",
    ]
    if hp.lockout_timeout:
        first = hp.lockout_timeout + (hp.step_budget(hp.steps[0]) if hp.steps else 0)
        lines.append(
            f"set_deadline {math.ceil(first)}\n"
            "if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1 &&\n"
            '  systemd-run --quiet --collect --unit="$UNIT" --on-active="$LOCKOUT" '
            '/bin/sh "$B/lockout.sh" >/dev/null 2>&1; then\n'
            '  echo systemd >"$B/lockout.mode"; mark lockout armed systemd\n'
            "else\n"
            '  setsid nohup sh "$B/lockout.sh" >/dev/null 2>&1 </dev/null &\n'
            "  _i=0\n"
            '  while [ ! -s "$PIDFILE" ] && [ $_i -lt 50 ]; do sleep 0.1; _i=$((_i + 1)); done\n'
            '  if alive "$(cat "$PIDFILE" 2>/dev/null)" "$B/lockout.sh"; then\n'
            '    echo process >"$B/lockout.mode"; mark lockout armed process "$(cat "$PIDFILE")"\n'
            "  else\n"
            "    mark lockout failed; failed=-1; frc=1\n"
            "  fi\n"
            "fi"
        )
    index = _file_index(hp)
    for i, step in enumerate(hp.steps):
        block = [
            'if [ -z "$failed" ]; then',
            f'  touch "$B/progress/{i}.started"',
        ]
        if hp.lockout_timeout:
            block.append(f"  set_deadline {math.ceil(hp.lockout_timeout + hp.step_budget(step))}")
        block.append(f"  mark step-begin {i} $(now)")
        block.append("fi")
        lines.append("\n".join(block))
        for w in step.writes:
            lines.append(_write(i, index[w.path], w.path, w.content, w.mode))
        for j, argv in enumerate(step.commands):
            lines.append(
                f'if [ -z "$failed" ]; then\n'
                f"  run c.{i}.{j} {_cmd(argv)} || {{ frc=$?; failed={i}; }}\n"
                f"fi"
            )
        if step.drain is not None:
            lines.append(_drain(i, step))
        lines.append(
            f'if [ "$failed" = {i} ]; then mark step-end {i} "$frc" $(now)\n'
            f'elif [ -z "$failed" ]; then mark step-end {i} 0 $(now); fi'
        )
    lines.append(
        'if [ -n "$failed" ]; then\n'
        '  mark phase-end failed "$failed" "$frc"\n'
        "  if take_lock phase; then\n"
        "    disarm\n"
        '    sh "$B/restore.sh"\n'
        '    sh "$B/snapshot.sh" post\n'
        '    touch "$B/restore.done"\n'
        "  else\n"
        '    mark restore-by "$(lock_owner)"\n'
        "    wait_done 600\n"
        "  fi\n"
        "  exit 1\n"
        "fi"
    )
    if hp.lockout_timeout:
        lines.append("set_deadline $LOCKOUT")
    lines.append("mark phase-end ok\nexit 0")
    return "\n".join(lines) + "\n"


def _lockout(hp: HostPhase) -> str:
    return (
        f". {_q(hp.dir)}/lib.sh\n"
        "trap '' HUP PIPE\n"
        'exec >>"$B/lockout.log" 2>&1\n'
        'echo $$ >"$PIDFILE"\n'
        "while :; do\n"
        '  _d=$(cat "$B/deadline" 2>/dev/null || echo 0)\n'
        '  [ "$(date +%s)" -ge "$_d" ] && break\n'
        "  sleep 1\n"
        "done\n"
        "take_lock timer || exit 0\n"
        "mark lockout fired $(now)\n"
        "abort_phase\n"
        'sh "$B/restore.sh"\n'
        'sh "$B/snapshot.sh" post\n'
        'touch "$B/restore.done"\n'
        'rm -f "$PIDFILE"\n'
    )


def _install(hp: HostPhase, name: str, body: str) -> str:
    return f"printf '%s' {_q(body)} >\"$B/{name}\""


def prune_backups_script(plan_id: str, keep: int) -> str:
    """Remove all but the newest `keep` plan directories under BACKUP_ROOT (`plan_id`'s counts).

    A directory whose phase still runs, or whose lock-out timer is armed and has not restored,
    is kept whatever its age: its restore.sh may still be needed. Names that are not plan ids
    are not ours and are left alone.
    """
    if not _PLAN_ID_RE.match(plan_id):
        raise ValueError(f"plan id {plan_id!r} cannot name a directory")
    return (
        f"_keep={keep - 1}\n"
        f"ls -1dt -- {BACKUP_ROOT}/*/ 2>/dev/null | while IFS= read -r _d; do\n"
        '  _d=${_d%/}; _n=${_d##*/}\n'
        f"  [ \"$_n\" = {_q(plan_id)} ] && continue\n"
        '  case $_n in ""|*[!A-Za-z0-9_-]*) continue ;; esac\n'
        "  if [ $_keep -gt 0 ]; then _keep=$((_keep - 1)); continue; fi\n"
        "  _busy=\n"
        '  for _p in "$_d"/*/; do\n'
        '    _m=$(cat "$_p/lockout.mode" 2>/dev/null)\n'
        '    case $_m in systemd|process) [ -e "$_p/restore.done" ] || _busy=1 ;; esac\n'
        '    _q=$(cat "$_p/phase.pid" 2>/dev/null)\n'
        "    if [ -n \"$_q\" ] && tr '\\0' ' ' <\"/proc/$_q/cmdline\" 2>/dev/null | "
        'grep -qF -- "${_p}phase.sh"; then _busy=1; fi\n'
        "  done\n"
        '  [ -n "$_busy" ] || rm -rf -- "$_d"\n'
        "done\n"
    )


def build_phase_script(hp: HostPhase) -> str:
    """The script for `transport.run_script`: install the helpers, run the phase, print its log."""
    parts = [
        "set -u",
        "umask 077",
        f"B={_q(hp.dir)}",
        f"PIDFILE={_q(lockout_pidfile(hp.plan_id, hp.phase))}",
        f"echo '@@shoal-run {hp.nonce}'",
        # A directory from an earlier attempt of the same plan: refuse while its phase or its
        # timer still runs, else keep it aside.
        'if [ -d "$B" ]; then\n'
        '  for _f in "$B/phase.pid:phase.sh" "$PIDFILE:lockout.sh"; do\n'
        '    _p=$(cat "${_f%%:*}" 2>/dev/null) || continue\n'
        "    if [ -n \"$_p\" ] && tr '\\0' ' ' <\"/proc/$_p/cmdline\" 2>/dev/null | "
        'grep -qF -- "$B/${_f##*:}"; then\n'
        f"      echo '@@shoal {hp.nonce} busy'; exit 75\n"
        "    fi\n"
        "  done\n"
        '  mv -- "$B" "$B.$(date +%s%N)"\n'
        "fi",
        prune_backups_script(hp.plan_id, hp.keep_backups).rstrip("\n"),
        'mkdir -p "$B/pre" "$B/post" "$B/out" "$B/progress" || exit 70',
        f'echo {hp.nonce} >"$B/nonce"',
        _install(hp, "lib.sh", _lib(hp)),
        _install(hp, "snapshot.sh", _snapshot(hp)),
        _install(hp, "restore.sh", _restore(hp)),
        _install(hp, "lockout.sh", _lockout(hp)),
        _install(hp, "phase.sh", _phase(hp)),
        'setsid -w sh "$B/phase.sh" >"$B/phase.log" 2>&1 </dev/null',
        "rc=$?",
        'cat "$B/phase.log"',
        '[ -s "$B/lockout.log" ] && cat "$B/lockout.log"',
        "exit $rc",
    ]
    return "\n".join(parts) + "\n"


def _preamble(plan_id: str, phase: Phase) -> str:
    b = _q(phase_dir(plan_id, phase))
    return (
        "set -u\n"
        f"if [ ! -f {b}/lib.sh ]; then echo '@@shoal-missing'; exit 3; fi\n"
        f". {b}/lib.sh\n"
        'echo "@@shoal-run $N"\n'
    )


def build_confirm_script(plan_id: str, phase: Phase) -> str:
    """Confirm a phase (run over a NEW connection): take the lock so no restore runs, disarm.

    Prints `@@shoal-confirm confirmed`, or `restored` with the timer's log when the timer (or
    anything else) took the lock first.
    """
    return _preamble(plan_id, phase) + (
        "if take_lock confirmed; then\n"
        "  disarm >/dev/null\n"
        "  echo '@@shoal-confirm confirmed'\n"
        "else\n"
        "  _by=$(lock_owner)\n"
        "  wait_done 600\n"
        '  echo "@@shoal-confirm restored $_by"\n'
        '  [ -s "$B/lockout.log" ] && cat "$B/lockout.log"\n'
        "fi\n"
    )


def build_rollback_script(plan_id: str, phase: Phase) -> str:
    """Undo a finished phase on the controller's request, then snapshot again for the proof."""
    return _preamble(plan_id, phase) + (
        "disarm >/dev/null\n"
        'rm -rf -- "$B/restore.lock" "$B/restore.done" "$B/post"\n'
        'mkdir -p "$B/post"\n'
        "take_lock controller\n"
        'sh "$B/restore.sh"\n'
        'sh "$B/snapshot.sh" post\n'
        'touch "$B/restore.done"\n'
    )


def build_recover_script(plan_id: str, phase: Phase) -> str:
    """After the controller lost a phase's channel: stop it if it still runs and restore.

    Whoever already restores (the phase itself, the timer) is waited for; a phase that finished
    but was never confirmed is rolled back too, because the controller never saw its result.
    A confirmed phase is rolled back as well (marked `recover-confirmed` first): whoever asks
    for a recovery gave up on the run, and a confirmed phase kept while the phases after it are
    undone would leave the host at a state no plan describes (see `reconciler.apply.recovery`).
    Prints the phase's log, then the restore's. A controller that dies again while this runs
    closes its channel: the restore goes on (SIGHUP and SIGPIPE ignored), so the next recovery
    finds it done instead of waiting for a restore that was cut off halfway.
    """
    return _preamble(plan_id, phase) + (
        "trap '' HUP PIPE\n"
        "if take_lock recover; then\n"
        "  disarm\n"
        "  abort_phase\n"
        '  sh "$B/restore.sh"\n'
        '  sh "$B/snapshot.sh" post\n'
        '  touch "$B/restore.done"\n'
        'elif [ "$(lock_owner)" = confirmed ]; then\n'
        "  mark recover-confirmed\n"
        "  disarm >/dev/null\n"
        '  rm -rf -- "$B/restore.lock" "$B/restore.done" "$B/post"\n'
        '  mkdir -p "$B/post"\n'
        "  take_lock recover\n"
        '  sh "$B/restore.sh"\n'
        '  sh "$B/snapshot.sh" post\n'
        '  touch "$B/restore.done"\n'
        "else\n"
        '  mark restore-by "$(lock_owner)"\n'
        "  wait_done 600 && mark restore-done\n"
        "fi\n"
        'cat "$B/phase.log" 2>/dev/null\n'
        '[ -s "$B/lockout.log" ] && cat "$B/lockout.log"\n'
        "exit 0\n"
    )


def build_status_script(plan_id: str, phase: Phase) -> str:
    """Read-only: the phase's logs as they are now (for a restarted controller)."""
    return _preamble(plan_id, phase) + (
        'cat "$B/phase.log" 2>/dev/null\n[ -s "$B/lockout.log" ] && cat "$B/lockout.log"\nexit 0\n'
    )


def build_snapshot_script(plan_id: str, phase: Phase, which: str) -> str:
    """Take the phase's snapshot again into `which` (e.g. "check"), for a later proof."""
    if not re.match(r"^[a-z]+$", which) or which == "pre":
        raise ValueError(f"bad snapshot name {which!r}")
    return _preamble(plan_id, phase) + f'sh "$B/snapshot.sh" {which}\n'
