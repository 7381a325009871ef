"""Helpers for the fault matrix of real states (tests/lab/test_executor_rollback_states.py).

Plans come from cluster files through the real path (load_repository, gather_facts,
plan_desired); a test applies one or more hosts' plans of it and makes one command of one step
fail on one host.

Faults are argv-matched wrappers: a script bind-mounted over a program in the host's mount
namespace only (the lab host's namespace is a slave, so neither the machine nor another host
sees it). The wrapper acts only on the `nth` call whose arguments are exactly (or contain) the
given text and runs a private copy of the real program otherwise, so the facts, snapshots,
undo commands and the rollback's proof still read and change the real host. The scripts are
named like lab/inject.py's, so `lab.clear_injections` removes them (and kills hung calls).
A real program cannot always run in the lab: installing a package would write to the
machine's /usr (lab hosts share it) and needs the network, the kernel has no ip_vs module and
no lab host runs systemd; there the wrapper stands in for the program (`OK`, or a unit
state recorded in a file for systemctl), and the test that does so says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import ipaddress
import itertools
import os
import posixpath
import secrets
import shlex
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab import Lab
from lab.inject import HANG_NAME
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import Fact, HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import LEDGER_PATH, plan_desired
from reconciler.plan.steps import Plan, Step
from states.keepalived import CONF_PATH, PID_DIR
from states.nft_dsr import SCRIPT_PATH, UNDO_PATH
from tests.lab.executor_support import raw_state, transport_for

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "config-repo"
STATES_DIR = "/etc/shoal-rbstates"  # the extras' files (file.managed)
UNITS_DIR = "/run/shoal-rbunits"  # the stand-in systemctl's record of started units
KEEPALIVED_PID = f"{PID_DIR}/keepalived.pid"
DAEMON_ARGS = 'DAEMON_ARGS="--vrrp"'  # no IPVS in this kernel: keepalived's VRRP part only
# Where the host's shell finds system programs (the lab hosts' /usr is the machine's).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SETTLE = 5.0  # seconds a daemon may take to act on a signal before its state is compared

# command_timeout bounds every command of a phase; keepalived's stop waits up to 10 s.
SETTINGS = """\
approval = "auto"

[apply]
batch_size = 3
lockout_timeout = 10
command_timeout = 12
drain_timeout = 2

[verify]
enabled = false
"""


def vip(lab: Lab, octet: int) -> str:
    return str(ipaddress.IPv4Network(lab.subnet)[octet])


# --- config repos and real plans -------------------------------------------------------------


def service_toml(name: str, address: str, port: int, weights: Mapping[str, int]) -> str:
    servers = "".join(
        f'\n  [[service.real_server]]\n  host = "{h}"\n  weight = {w}\n' for h, w in weights.items()
    )
    return (
        f'\n[[service]]\nname = "{name}"\nvip = "{address}"\nport = {port}\nprotocol = "tcp"\n'
        f'scheduler = "wlc"\ncheck = {{ type = "tcp" }}\n{servers}'
    )


def cluster_toml(name: str, directors: Sequence[str], backend: str, services: str) -> str:
    quoted = ", ".join(f'"{d}"' for d in directors)
    return (
        f'[cluster]\nname = "{name}"\ndirectors = [{quoted}]\ndirector = "{backend}"\n'
        f'arp_method = "sysctl"\n{services}'
    )


def state_toml(sid: str, function: str, host: str, args: str, **requisites: str) -> str:
    """One `[[state]]` of a cluster file; `requisites` e.g. require="other-id"."""
    extra = "".join(f'{kind} = ["{target}"]\n' for kind, target in requisites.items())
    return (
        f'\n[[state]]\nid = "{sid}"\nfunction = "{function}"\nhosts = ["{host}"]\n'
        f"args = {args}\n{extra}"
    )


def write_desired(lab: Lab, workdir: Path, name: str, cluster: str) -> Desired:
    """A config repo for `lab` with one cluster file, `name`; each call a directory of its own."""
    dest = workdir / f"repo-{secrets.token_hex(4)}"
    lab.write_config_repo(FIXTURE, dest)
    (dest / "shoal.toml").write_text(SETTINGS)
    for old in (dest / "clusters").glob("*.toml"):
        old.unlink()
    (dest / "clusters" / f"{name}.toml").write_text(cluster)
    return load_repository(dest)


async def gather(lab: Lab, desired: Desired, hosts: Sequence[str]) -> dict[str, HostFacts]:
    async with transport_for(lab, desired) as t:
        return await gather_facts(t, list(hosts), managed_paths(desired))


@dataclass(frozen=True, slots=True)
class Planned:
    """A real plan and the hosts' facts it was made from (their state before an apply)."""

    desired: Desired
    plan: Plan
    facts: Mapping[str, HostFacts]

    def steps(self, host: str) -> list[Step]:
        return list(self.plan.hosts[host].steps)


async def plan_now(
    lab: Lab,
    desired: Desired,
    hosts: Sequence[str],
    adjust: Callable[[HostFacts], HostFacts] | None = None,
) -> Planned:
    """The real plan from the facts of `hosts` now (the others count as unreachable and get
    no steps); `adjust` changes each host's facts first, for a fact the lab cannot have (the
    state of a systemd unit)."""
    facts = await gather(lab, desired, hosts)
    planned_from = {h: adjust(f) for h, f in facts.items()} if adjust is not None else facts
    # The executor gets the facts as read: the rollback's proof compares the host with them.
    return Planned(desired, plan_desired(desired, planned_from), facts)


def only(plan: Plan, hosts: Sequence[str]) -> Plan:
    """The plan of `hosts` alone, under an id of its own (each apply its own backup dir)."""
    return plan.model_copy(
        update={
            "id": f"{plan.id}-{secrets.token_hex(3)}",
            "hosts": {h: plan.hosts[h] for h in hosts},
        }
    )


async def apply(lab: Lab, planned: Planned, hosts: Sequence[str], **settings: object) -> RunResult:
    """Apply the plan of `hosts`; `settings` override [apply] of the repo's shoal.toml.

    The plan's facts are the pre-apply facts (as `shoal apply` hands them over): they must
    still be the hosts' facts, which every test here checks by comparing the raw state first.
    """
    desired = planned.desired
    if settings:
        apply_settings = desired.settings.apply.model_copy(update=settings)
        desired = desired.model_copy(
            update={"settings": desired.settings.model_copy(update={"apply": apply_settings})}
        )
    plan = only(planned.plan, hosts)
    async with transport_for(lab, desired) as t:
        return await apply_plan(plan, desired, t, facts=planned.facts)


async def converge_hosts(
    lab: Lab, desired: Desired, hosts: Sequence[str], read: Sequence[str]
) -> None:
    """Bring `hosts` to `desired` through shoal (a test's precondition, planned from the facts
    of `read`); must succeed."""
    planned = await plan_now(lab, desired, read)
    if only(planned.plan, hosts).empty:
        return
    result = await apply(lab, planned, hosts)
    assert result.ok, summary(result)


# --- argv-matched faults ---------------------------------------------------------------------

# What a wrapper does with the matching call. `$REAL` is the real program's private copy.
FAIL = 'echo "shoal test: injected failure of $0 $*" >&2; exit 3'
# The program runs (and changes the host), then the call reports a failure anyway.
AFTER = (
    '(exec -a "$0" "$REAL" "$@"); echo "shoal test: injected failure of $0 $* after it ran" >&2; '
    "exit 3"
)
HANG = f"exec -a {HANG_NAME} sleep infinity"
OK = "exit 0"  # a stand-in success: the real program cannot run in the lab


@dataclass(frozen=True, slots=True)
class Rule:
    """`action` on the `nth` call whose arguments are `args` (or contain it, `contains`)."""

    args: str
    action: str
    nth: int = 0  # 0: every matching call
    contains: bool = False


def _inject_dir(lab: Lab, host: str) -> Path:
    directory = lab.host_dir(host) / "inject"
    directory.mkdir(exist_ok=True)
    return directory


def _free_script(directory: Path) -> Path:
    # lab/inject.py's naming: lab.clear_injections finds mounts of these and unmounts them.
    for n in itertools.count(1):
        script = directory / f"shoal-lab-inject-{n}.sh"
        if not script.exists():
            return script
    raise AssertionError("unreachable")


def _wrapper(program: str, real: Path, rules: Sequence[Rule], counters: Path) -> str:
    lines = [
        "#!/bin/bash",
        f"# shoal test: argv-matched faults over {program} on this host only",
        f"REAL={shlex.quote(str(real))}",
        'case "$*" in',
    ]
    for k, rule in enumerate(rules):
        pattern = shlex.quote(rule.args)
        if rule.contains:
            pattern = f"*{pattern}*"
        counter = shlex.quote(str(counters / f"rule-{k}"))
        lines.append(f"  {pattern})")
        if rule.nth:
            # Calls are counted per rule; the ones that are not the nth run the real program.
            lines.append(
                f"    n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n >{counter}"
            )
            lines.append(f"    if [ $n -eq {rule.nth} ]; then {rule.action}; fi ;;")
        else:
            lines.append(f"    {rule.action} ;;")
    lines += ["esac", 'exec -a "$0" "$REAL" "$@"', ""]
    return "\n".join(lines)


async def inject(lab: Lab, host: str, program: str, *rules: Rule) -> None:
    """Wrap `program` (an absolute path, as the host resolves it) on `host` with `rules`."""
    directory = _inject_dir(lab, host)
    # /usr is the machine's in every lab host: a copy of the real file (outside the host's
    # view of /usr, which the wrapper covers) is what the wrapper runs, under the name it was
    # called by (`exec -a "$0"`: multi-call binaries such as kmod go by that name).
    source = os.path.realpath(program)
    real = directory / "real" / posixpath.basename(source)
    if not real.exists():
        real.parent.mkdir(exist_ok=True)
        shutil.copy2(source, real)
    counters = directory / f"counters-{secrets.token_hex(4)}"
    counters.mkdir()
    script = _free_script(directory)
    script.write_text(_wrapper(program, real, rules, counters))
    script.chmod(0o755)
    await lab.exec(host, ["mount", "--bind", str(script), program])


async def hide(lab: Lab, host: str, program: str) -> None:
    """Make `program` look absent on `host` (`command -v` finds no executable file)."""
    script = _free_script(_inject_dir(lab, host))
    script.write_text(f"# shoal test: {program} hidden on this host\n")
    script.chmod(0o644)
    await lab.exec(host, ["mount", "--bind", str(script), program])


@contextlib.asynccontextmanager
async def cleared(lab: Lab, *hosts: str) -> AsyncIterator[None]:
    """Whatever a block injects on `hosts` is gone after it (and hung calls are stopped)."""
    try:
        yield
    finally:
        for h in hosts:
            await lab.clear_injections(h)


def written_tmp(path: str) -> str:
    """The temporary file the phase script writes a FileWrite into before its rename
    (reconciler.apply.phase_script); its `chmod` is the one command of a write a fault can fail."""
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.shoal-new")


def write_fault(step: Step) -> tuple[str, Rule]:
    """A failing write of `step`'s (last) file: its chmod fails."""
    w = step.writes[-1]
    return "/usr/bin/chmod", Rule(f"{w.mode} {written_tmp(w.path)}", FAIL)


def command_fault(step: Step, k: int, action: str, nth: int = 0) -> tuple[str, Rule]:
    """`action` on the call of `step`'s command k (the program found as the host finds it)."""
    argv = step.commands[k]
    program = shutil.which(argv[0], path=SYSTEM_PATH)
    assert program is not None, argv
    return program, Rule(" ".join(argv[1:]), action, nth=nth)


# A stand-in for systemctl's start/stop/restart of one unit on a host without systemd: the
# unit's state is a file, so the rollback's effect on it is visible. Everything else (enable,
# disable) is the real systemctl.
def unit_rules(unit: str) -> list[Rule]:
    state = shlex.quote(f"{UNITS_DIR}/{unit}")
    active = f"echo active >{state}; exit 0"
    return [
        Rule(f"start {unit}", active),
        Rule(f"restart {unit}", active),
        Rule(f"stop {unit}", f"rm -f {state}; exit 0"),
    ]


def with_unit(unit: str, *, active: bool) -> Callable[[HostFacts], HostFacts]:
    """Facts as a host with systemd would report them: `unit` known, active or not (the lab's
    hosts run no systemd, so their services fact is unknown and service.running plans nothing)."""

    def adjust(facts: HostFacts) -> HostFacts:
        return facts.model_copy(update={"services": Fact.of({unit: active})})

    return adjust


def with_inactive_unit(unit: str) -> Callable[[HostFacts], HostFacts]:
    return with_unit(unit, active=False)


# --- the state a rollback must give back ---------------------------------------------------
# Everything, but for one thing a rollback keeps on purpose: the phase's backups, under
# /var/lib/shoal/backups/<plan-id>/ (and so /var/lib/shoal itself, mode 0700, on a host that had
# none). They are shoal's record of what it put back, which `GET /runs/{id}` lists and the
# operator may need after the fact; pruned to the newest few plans by the next apply. Anything
# else under /var/lib/shoal (the ledger, nft files) must be as before.

_EXTRA_STATE = f"""
for f in {CONF_PATH} {UNDO_PATH} {SCRIPT_PATH} {LEDGER_PATH}; do
  if [ -f "$f" ]; then echo "== $f"; cat "$f"; else echo "== $f absent"; fi
done
echo "== trees"
find /etc/keepalived {STATES_DIR} {UNITS_DIR} -printf '%p %y %m %s %l\\n' 2>&1 | sort
echo "== /var/lib/shoal, but for the backups"
find /var/lib/shoal -mindepth 1 -path /var/lib/shoal/backups -prune \\
  -o -printf '%p %y %m %s %l\\n' 2>/dev/null | sort
for f in {STATES_DIR}/* {UNITS_DIR}/*; do [ -f "$f" ] && echo "== $f" && cat "$f"; done
echo "== keepalived"
p=$(cat {KEEPALIVED_PID} 2>/dev/null)
if [ -n "$p" ] && [ -r "/proc/$p/cmdline" ]; then
  echo "running: pid $p, $(cat /proc/$p/comm) $(tr '\\0' ' ' </proc/$p/cmdline)"
else
  echo "not running (pid file: ${{p:-none}})"
fi
echo "== processes"
for d in /proc/[0-9]*; do
  c=$(cat "$d/comm" 2>/dev/null) || continue
  case $c in keepalived) echo "$c ${{d#/proc/}}" ;; esac
done | sort
exit 0
"""


async def host_state(lab: Lab, host: str) -> dict[str, str]:
    """`raw_state` plus keepalived (file, pid file, its process), shoal's files and the test's
    own files and unit records: what the states in these tests change."""
    state = await raw_state(lab, host)
    res = await lab.exec(host, ["sh", "-c", _EXTRA_STATE])
    state["shoal"] = res.stdout
    return state


async def settled_state(lab: Lab, host: str, want: Mapping[str, str]) -> dict[str, str]:
    """`host_state`, read again for up to SETTLE seconds until it equals `want`.

    Only for a daemon that acts on a signal after the command that sent it returned
    (keepalived reloads on SIGHUP on its own time); whatever differs after that is returned.
    """
    deadline = time.monotonic() + SETTLE
    while True:
        now = await host_state(lab, host)
        if now == want or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


def differences(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """A unified diff of every output that differs (for an assertion message)."""
    out: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, ""), after.get(key, "")
        if a != b:
            out += difflib.unified_diff(
                a.splitlines(), b.splitlines(), f"{key} before", f"{key} after", lineterm=""
            )
    return "\n".join(out)


def summary(result: RunResult) -> str:
    """A run in a few lines: each step's result, each rollback and its differences."""
    lines = [f"{s.id}: {s.result} {s.comment.splitlines()[0][:160] if s.comment else ''}"
             for s in result.steps()]  # fmt: skip
    for rb in result.rollbacks:
        lines.append(f"rollback {rb.host} by {rb.by}: proven {rb.proven}")
        lines += [f"  {d}" for d in rb.differences]
    return "\n".join(lines)


def assert_same(before: Mapping[str, str], after: Mapping[str, str], result: RunResult) -> None:
    """Every raw output as before; else the diff and the run."""
    assert after == before, f"{differences(before, after)}\n{summary(result)}"


def assert_failed_at(
    result: RunResult,
    host: str,
    steps: Sequence[Step],
    failing: int,
    function: str,
    rule: Rule | None = None,
) -> None:
    """The run stopped at `steps[failing]` (of `function`) on `host`: the steps before it applied
    and were rolled back, the rest never ran, and the phase's rollback is proven. With an AFTER
    `rule`, the failing command did run (so its change was there for the rollback to undo)."""
    assert not result.ok, summary(result)
    got = result.hosts[host]
    assert [s.id for s in got] == [s.id for s in steps], summary(result)
    results = [s.result for s in got]
    assert results == [True] * failing + [False] + [None] * (len(steps) - failing - 1), summary(
        result
    )
    failed = got[failing]
    assert failed.function == function, failed
    assert "shoal test: injected failure" in failed.output or failed.comment.startswith(
        "timed out"
    ), failed
    if rule is not None and rule.action == AFTER:
        assert "after it ran" in failed.output, failed
    assert all(s.rolled_back for s in got[:failing]), summary(result)
    assert result.errors[0].kind == "ApplyError" and result.errors[0].step_id == steps[failing].id
    mine = [rb for rb in result.rollbacks if rb.host == host]
    assert len(mine) == 1 and mine[0].by == "phase", summary(result)
    assert mine[0].proven, mine[0].differences
    assert mine[0].digest_before == mine[0].digest_after
