"""The script one phase runs on one host (pure: text in, text out).

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
end. Every later script (`reconciler.apply.followup_scripts`: confirm, rollback, recover) reads
the same directory, so a controller that restarts can still find out what happened.
"""

from __future__ import annotations

import math
import posixpath
import re

from reconciler.apply.drain_poll import drain_poll
from reconciler.apply.host_phase import (
    BACKUP_ROOT,
    PLAN_ID_RE,
    HostPhase,
    lockout_pidfile,
)
from reconciler.apply.sh_library import command_line, library, quote
from reconciler.apply.snapshot_restore import file_index, restore_script, snapshot_script, tmp_path

_MODE_RE = re.compile(r"^[0-7]{3,4}$")


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
    tmp = quote(tmp_path(path, "new"))
    name = f"w.{i}.{k}"
    lines = ['if [ -z "$failed" ]; then']
    if ancestors:
        # Record each directory we create, so the rollback can remove it again.
        lines += [
            "  for _d in " + " ".join(quote(a) for a in reversed(ancestors)) + "; do",
            '    [ -d "$_d" ] || { mkdir -m 0755 -- "$_d" && echo "$_d" >>"$B/progress/dirs"; }',
            "  done",
        ]
    lines += [
        f"  {{ printf '%s' {quote(content)} >{tmp} && chmod {mode} {tmp} && "
        f'mv -f -- {tmp} {quote(path)}; }} >"$B/out/{name}" 2>&1',
        "  _rc=$?",
        f"  [ $_rc -eq 0 ] || rm -f -- {tmp}",
        f'  emit {name} $_rc "$B/out/{name}"',
        f"  [ $_rc -eq 0 ] || {{ failed={i}; frc=$_rc; }}",
        "fi",
    ]
    return "\n".join(lines)


def _phase(hp: HostPhase) -> str:
    lines = [
        f". {quote(hp.dir)}/lib.sh",
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
    index = file_index(hp)
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
                f"  run c.{i}.{j} {command_line(argv)} || {{ frc=$?; failed={i}; }}\n"
                f"fi"
            )
        if step.drain is not None:
            lines.append(drain_poll(i, step))
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
        f". {quote(hp.dir)}/lib.sh\n"
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
    return f"printf '%s' {quote(body)} >\"$B/{name}\""


def prune_backups_script(plan_id: str, keep: int) -> str:
    """Remove all but the newest `keep` plan directories under BACKUP_ROOT (`plan_id`'s counts).

    A directory whose phase still runs, or whose lock-out timer is armed and has not restored,
    is kept whatever its age: its restore.sh may still be needed. Names that are not plan ids
    are not ours and are left alone.
    """
    if not PLAN_ID_RE.match(plan_id):
        raise ValueError(f"plan id {plan_id!r} cannot name a directory")
    return (
        f"_keep={keep - 1}\n"
        f"ls -1dt -- {BACKUP_ROOT}/*/ 2>/dev/null | while IFS= read -r _d; do\n"
        '  _d=${_d%/}; _n=${_d##*/}\n'
        f"  [ \"$_n\" = {quote(plan_id)} ] && continue\n"
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
        f"B={quote(hp.dir)}",
        f"PIDFILE={quote(lockout_pidfile(hp.plan_id, hp.phase))}",
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
        _install(hp, "lib.sh", library(hp)),
        _install(hp, "snapshot.sh", snapshot_script(hp)),
        _install(hp, "restore.sh", restore_script(hp)),
        _install(hp, "lockout.sh", _lockout(hp)),
        _install(hp, "phase.sh", _phase(hp)),
        'setsid -w sh "$B/phase.sh" >"$B/phase.log" 2>&1 </dev/null',
        "rc=$?",
        'cat "$B/phase.log"',
        '[ -s "$B/lockout.log" ] && cat "$B/lockout.log"',
        "exit $rc",
    ]
    return "\n".join(parts) + "\n"
