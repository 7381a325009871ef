"""snapshot.sh and restore.sh of a phase: the raw snapshot of what it touches, and its undo.

snapshot.sh takes every section `reconciler.apply.snapshot_targets` chose into pre/ (before
the phase) or post/ (after a rollback, for the proof). restore.sh undoes every started step in
reverse (its undo commands, then its files back from pre/ byte for byte), runs again what must
run with the old files back, drops the nft tables the phase's tools created, and removes the
directories its writes created.
"""

from __future__ import annotations

import posixpath

from reconciler.apply.host_phase import HostPhase
from reconciler.apply.sh_library import command_line, quote
from reconciler.apply.snapshot_targets import command_files


def snapshot_script(hp: HostPhase) -> str:
    t = hp.targets
    lines = [
        f". {quote(hp.dir)}/lib.sh",
        'W=$1; D="$B/$W"; mkdir -p "$D"',
        'snap() { _n=$1; shift; "$@" >"$D/$_n" 2>"$D/$_n.err" </dev/null; '
        'emit "$W.$_n" $? "$D/$_n"; }',
        # External tools run under `timeout` too: a hung tool must not hang the snapshot.
        'if command -v timeout >/dev/null 2>&1; then TO="timeout -k 2 $T"; else TO=; fi',
    ]
    if t.arptables:
        lines.append("snap arptables $TO arptables-save")
    for table in t.iptables_tables:
        lines.append(f"snap iptables_{table} $TO iptables-save -t {quote(table)}")
    for table in t.ip6tables_tables:
        lines.append(f"snap ip6tables_{table} $TO ip6tables-save -t {quote(table)}")
    if t.nft:
        lines.append("snap nft nft_ours")
    if t.nft or t.arptables or t.iptables_tables or t.ip6tables_tables:
        lines.append("snap nft_tables nft_tables")
    if t.ipvs:
        lines.append("snap ipvs $TO ipvsadm -Sn")
    if t.interfaces is not None:
        if t.interfaces:
            for i, name in enumerate(t.interfaces):
                lines.append(f"snap addr.{i} $TO ip -j addr show dev {quote(name)}")
        else:
            lines.append("snap addr $TO ip -j addr")
    if t.sysctls:
        lines.append("snap sysctl sysctls " + " ".join(quote(k) for k in t.sysctls))
    for k, path in enumerate(t.files):
        p = quote(path)
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


def tmp_path(path: str, tag: str) -> str:
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.shoal-{tag}")


def file_index(hp: HostPhase) -> dict[str, int]:
    return {path: k for k, path in enumerate(hp.targets.files)}


def restore_script(hp: HostPhase) -> str:
    t = hp.targets
    index = file_index(hp)
    lines = [f". {quote(hp.dir)}/lib.sh", 'mark rollback-begin "$(lock_owner)"']
    for i in reversed(range(len(hp.steps))):
        step = hp.steps[i]
        body = [f"run u.{i}.{j} {command_line(argv)}" for j, argv in enumerate(step.undo)]
        paths = [w.path for w in reversed(step.writes)]
        # Files its commands removed or linked (rm -f, systemctl enable/disable): after the
        # undo commands, so the snapshot has the last word, byte for byte.
        paths += [f for argv in reversed(step.commands) for f in command_files(argv)]
        for path in dict.fromkeys(paths):
            k = index[path]
            body.append(
                f"restore_file {k} {quote(path)} {quote(tmp_path(path, 'new'))} "
                f"{quote(tmp_path(path, 'old'))}"
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
                f"  run r.{i}.{j} {command_line(argv)}"
                for j, argv in enumerate(step.after_rollback)
            )
            lines.append("fi")
    if t.arptables:
        lines.append("drop_if_created arp filter arptables-save")
    for table in t.iptables_tables:
        lines.append(f"drop_if_created ip {quote(table)} {quote(f'iptables-save -t {table}')}")
    for table in t.ip6tables_tables:
        lines.append(
            f"drop_if_created ip6 {quote(table)} {quote(f'ip6tables-save -t {table}')}"
        )
    # Directories a write created, deepest first; rmdir leaves any that are not empty.
    lines.append(
        'if [ -f "$B/progress/dirs" ]; then sort -r "$B/progress/dirs" | '
        'while IFS= read -r _d; do rmdir -- "$_d" 2>/dev/null; done; fi'
    )
    lines.append("mark rollback-end")
    return "\n".join(lines) + "\n"
