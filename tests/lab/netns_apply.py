"""Run one real server's plan for real, inside a throwaway network and mount namespace.

Started by tests/lab/test_states_netns.py as
`ip netns exec NS unshare --mount --propagation private python netns_apply.py METHOD`.
It puts tmpfs over the directories shoal writes (inside overlays, so nothing is made on the
machine), gives the namespace an `eth0`, creates some foreign objects (someone else's
address, ARP rule, nft table, REDIRECT), then:

1. gathers facts with the real facts script, plans, runs the steps (argv and file writes);
2. gathers again: the plan must be empty (the commands are exactly what the facts read back);
3. runs the boot restore script twice (idempotent: still empty);
4. "reboots": runs the first plan's runtime undo in reverse, then the restore script: empty;
5. plans the host out of the cluster: only shoal's objects go, sysctls get their values back,
   the ledger empties, the foreign objects survive; the plan after that is empty.

Prints one JSON line per check; exits non-zero on the first failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.parse import parse_facts_output
from reconciler.facts.script import build_facts_script
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan, Step
from tests.statecases import HOSTS, cluster_desired

HOST = "web1"
OVERLAID = ("/etc", "/var/lib", "/usr/local")
MOUNTS = ("/etc/sysctl.d", "/usr/local/sbin", "/etc/systemd/system", "/var/lib/shoal")
FOREIGN = (
    ("ip", "addr", "add", "10.9.9.10/32", "dev", "lo"),
    ("arptables", "-A", "INPUT", "-d", "10.9.9.9", "-j", "DROP"),
    ("iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.9.9.11/32", "-p", "tcp", "-m", "tcp",
     "--dport", "81", "-j", "REDIRECT"),
    ("nft", "add", "table", "arp", "foreign"),
)  # fmt: skip
RESTORE = "/usr/local/sbin/shoal-restore"


def run(argv: tuple[str, ...] | list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        fail("command", argv=list(argv), rc=result.returncode, stderr=result.stderr)
    return result  # type: ignore[no-any-return]


def report(check: str, **data: object) -> None:
    print(json.dumps({"check": check, **data}, default=str), flush=True)


def fail(check: str, **data: object) -> None:
    report(check, ok=False, **data)
    sys.exit(1)


@contextmanager
def private_trees() -> Iterator[None]:
    """/etc, /var/lib and /usr/local as overlays whose upper dirs are on a tmpfs, then a tmpfs on
    each of MOUNTS. The namespace's mounts are private, but a directory made in the machine's
    trees (/var/lib/shoal where it is missing) would be the machine's: made in an overlay, it is
    not. The only trace on the machine is an empty scratch directory, removed at the end."""
    with tempfile.TemporaryDirectory(prefix="shoal-netns-") as scratch:
        run(("mount", "-t", "tmpfs", "tmpfs", scratch))
        mounted = [scratch]
        try:
            for tree in OVERLAID:
                layer = Path(scratch) / tree.strip("/").replace("/", "-")
                (layer / "upper").mkdir(parents=True)
                (layer / "work").mkdir()
                options = f"lowerdir={tree},upperdir={layer}/upper,workdir={layer}/work"
                run(("mount", "-t", "overlay", "-o", options, "shoal-netns", tree))
                mounted.append(tree)
            for path in MOUNTS:
                os.makedirs(path, exist_ok=True)
                run(("mount", "-t", "tmpfs", "tmpfs", path))
                mounted.append(path)
            yield
        finally:
            for path in reversed(mounted):
                subprocess.run(("umount", "-l", path), capture_output=True)


def setup() -> None:
    run(("ip", "link", "set", "lo", "up"))
    run(("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"))
    run(("ip", "link", "set", "eth0peer", "up"))
    run(("ip", "addr", "add", f"{HOSTS[HOST]}/24", "dev", "eth0"))
    run(("ip", "link", "set", "eth0", "up"))
    for argv in FOREIGN:
        run(argv)


def facts(desired: Desired) -> dict[str, HostFacts]:
    script = build_facts_script(managed_paths(desired).get(HOST, []))
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True).stdout
    return {HOST: parse_facts_output(HOST, out)}


def steps_of(plan: Plan) -> list[Step]:
    return sorted(plan.hosts[HOST].steps, key=lambda s: s.phase)


def apply(plan: Plan) -> None:
    for step in steps_of(plan):
        for argv in step.commands:
            run(argv)
        for w in step.writes:
            path = Path(w.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(w.content)
            path.chmod(int(w.mode, 8))


def undo_runtime(plan: Plan) -> None:
    """What a reboot does: the runtime steps are gone, the files stay."""
    for step in reversed(steps_of(plan)):
        if step.subsystem in ("file", "service"):
            continue
        for argv in step.undo:
            run(argv)


def expect_empty(check: str, desired: Desired) -> dict[str, HostFacts]:
    f = facts(desired)
    hp = plan_desired(desired, f).hosts.get(HOST)  # a host with nothing of shoal's is left out
    if hp is not None and (hp.steps or hp.skipped):
        fail(check, steps=[s.model_dump(mode="json") for s in hp.steps],
             skipped=[s.model_dump(mode="json") for s in hp.skipped])  # fmt: skip
    report(check, ok=True)
    return f


def foreign_survives(check: str) -> None:
    addr = run(("ip", "-o", "addr", "show", "dev", "lo")).stdout
    arp = run(("arptables-save",)).stdout
    nat = run(("iptables-save", "-t", "nat")).stdout
    tables = run(("nft", "list", "tables")).stdout
    missing = [what for what, ok in (
        ("address", "10.9.9.10/32" in addr),
        ("arptables", "-d 10.9.9.9" in arp),
        ("iptables", "-d 10.9.9.11/32" in nat),
        ("nft", "table arp foreign" in tables),
    ) if not ok]  # fmt: skip
    if missing:
        fail(check, missing=missing)
    report(check, ok=True)


def main(method: str) -> None:
    with private_trees():
        checks(method)


def checks(method: str) -> None:
    setup()
    desired = cluster_desired(method)
    first = plan_desired(desired, facts(desired))
    if not first.hosts[HOST].steps:
        fail("first plan has steps")
    for step in first.hosts[HOST].steps:
        for argv in step.commands:
            if any(w in argv for w in ("-F", "-C", "-X", "flush")):
                fail("no flush", step=step.id)
    apply(first)
    report("applied", ok=True, steps=[s.id for s in steps_of(first)])
    expect_empty("in sync after apply", desired)
    foreign_survives("foreign objects kept after apply")

    run(("sh", RESTORE))
    run(("sh", RESTORE))
    expect_empty("restore script is idempotent", desired)

    undo_runtime(first)
    if not plan_desired(desired, facts(desired)).hosts[HOST].steps:
        fail("the undo took the runtime back")
    run(("sh", RESTORE))
    after_boot = facts(desired)
    # The runtime is back; files were never removed. Only the ledger-independent parts count.
    hp = plan_desired(desired, after_boot).hosts[HOST]
    if hp.steps:
        fail("restore brings the runtime back", steps=[s.id for s in hp.steps])
    report("restore brings the runtime back", ok=True)

    gone = cluster_desired(method, real_servers=())
    leave = plan_desired(gone, facts(gone))
    leave_ids = [s.id for s in steps_of(leave)]
    if not leave_ids:
        fail("leaving plan has steps")
    apply(leave)
    report("left the cluster", ok=True, steps=leave_ids)
    f = expect_empty("in sync after leaving", gone)
    ledger = f[HOST].ledger.value
    if ledger is None or any(ledger.entries.values()) or ledger.sysctl_originals:
        fail("ledger empty after leaving", ledger=ledger)
    sysctls = f[HOST].sysctls.value or {}
    changed = {k: v for k, v in sysctls.items() if ".arp_" in k and v != "0"}
    if changed:
        fail("sysctls restored", changed=changed)
    report("ledger empty, sysctls restored", ok=True)
    foreign_survives("foreign objects kept after leaving")


if __name__ == "__main__":
    main(sys.argv[1])
