"""Fake hosts for the executor's decision tests: responders for `FakeTransport` that answer the
executor's scripts the way a real host's scripts print.

A `FakeHost` holds one kind of state, sysctl values, which `sysctl -w KEY=VALUE` steps change.
It recognises each script the executor sends (facts, phase, confirm, rollback, recover) by what
the script does, reads the nonce and the steps' commands out of it, changes its sysctls as the
phase would, and prints the marker protocol of `reconciler.apply.sh_library` as the real
phase.sh, restore.sh, snapshot.sh and the follow-up scripts do (compare the lab runs in
tests/lab/test_executor_*.py). Knobs make it fail the way a real host does: a step's command
exits non-zero, the channel drops in the middle of a phase, new connections are refused (a
lock-out) and its timer restores it, or a restore leaves a value behind.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.apply.followup_scripts import build_confirm_script
from reconciler.apply.host_phase import HostPhase
from reconciler.apply.phase_script import build_phase_script
from reconciler.desired.models import ApplySettings, Desired, Host, Inventory, Settings
from reconciler.errors import HostUnreachable
from reconciler.plan.steps import Change, HostPlan, Phase, Plan, Step
from reconciler.transport.fake import Call, FakeTransport, Reply
from reconciler.transport.protocol import SCRIPT_ARGV

FACTS_SAMPLE = (
    Path(__file__).resolve().parents[3]
    / "fixtures"
    / "facts"
    / "facts_script"
    / "fresh_namespace.txt"
)
ARP_IGNORE = "net.ipv4.conf.all.arp_ignore"
ARP_ANNOUNCE = "net.ipv4.conf.all.arp_announce"

_DIR_RE = re.compile(r"/var/lib/shoal/backups/[A-Za-z0-9_-]+/\d+-[a-z_]+")
_RUN_NONCE_RE = re.compile(r"@@shoal-run ([0-9a-f]+)")
_STARTED_RE = re.compile(r"progress/(\d+)\.started")
_COMMAND_RE = re.compile(r"run c\.(\d+)\.(\d+) ([^\n|]*?) \|\|")
_SNAP_SYSCTL_RE = re.compile(r"snap sysctl sysctls ([^\n']*)")
_SYSCTL_SECTION_RE = re.compile(
    r"(#shoal-facts# begin sysctl\n).*?(\n#shoal-facts# end sysctl )", re.DOTALL
)


@dataclass
class OnHost:
    """A phase's backup directory on the fake host: what later scripts find there."""

    nonce: str
    keys: tuple[str, ...]  # the sysctls its snapshot holds
    before: dict[str, str]  # the sysctls before the phase (the pre/ snapshot)
    armed: bool
    undo: dict[int, list[str]]  # step -> its undo commands' section names ("u.<step>.<n>")
    started: list[int] = field(default_factory=list)
    log: str = ""  # phase.log
    lockout_log: str = ""  # lockout.log
    lock: str | None = None  # restore.lock/by


@dataclass
class FakeHost:
    """One host as the executor's scripts see it. Call it with a `Call` (a responder)."""

    name: str
    sysctls: dict[str, str] = field(default_factory=lambda: {ARP_IGNORE: "0", ARP_ANNOUNCE: "0"})
    # (step, exit status): that step's first command fails, as a real command would.
    fail_step: tuple[int, int] | None = None
    # The channel drops once the phase has run this many steps; the host goes on alone.
    drop_channel_after: int | None = None
    # New connections (confirm, recover) refused, this many times; with a lock-out timer armed,
    # the timer restores the host at the first refusal (the lock-out it exists for).
    refuse_new: int = 0
    # The timer restores the host just before the confirmation gets through.
    timer_first: bool = False
    # Sysctls a restore fails to put back (the rollback's proof must catch them).
    restore_leaves: frozenset[str] = frozenset()
    dirs: dict[str, OnHost] = field(default_factory=dict)
    # What the host was asked, in order: ("phase", dir), ("confirm", dir), ("facts", "")...
    asked: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, call: Call) -> Reply:
        script = call.script
        if "#shoal-facts#" in script:
            self.asked.append(("facts", ""))
            return Reply(0, self.facts_output())
        m = _DIR_RE.search(script)
        if m is None:
            raise AssertionError(f"{self.name}: a script the fake does not know:\n{script}")
        d = m.group(0)
        if 'setsid -w sh "$B/phase.sh"' in script:
            self.asked.append(("phase", d))
            return self.phase(d, script)
        kind = (
            "confirm" if "take_lock confirmed" in script
            else "recover" if "take_lock recover" in script
            else "rollback" if "take_lock controller" in script
            else "other"
        )  # fmt: skip
        self.asked.append((kind, d))
        if call.kind == "script_fresh" and self.refuse_new > 0:
            self.refuse_new -= 1
            here = self.dirs.get(d)
            if here is not None and here.armed and here.lock is None:
                self.timer_fires(here)
            raise HostUnreachable(self.name, "connection timed out (lock-out)")
        here = self.dirs.get(d)
        if here is None:
            return Reply(3, "@@shoal-missing\n")
        if kind == "confirm":
            return self.confirm(here)
        if kind == "rollback":
            return Reply(0, f"@@shoal-run {here.nonce}\n" + self.restore(here, "controller"))
        if kind == "recover":
            return self.recover(here)
        raise AssertionError(f"{self.name}: unexpected script for {d}")

    # --- what the host prints ---

    def facts_output(self) -> str:
        sample = FACTS_SAMPLE.read_text(encoding="utf-8")
        sample = sample.replace("begin hostname\nvm\n", f"begin hostname\n{self.name}\n", 1)
        body = "".join(f"{k}={v}\n" for k, v in sorted(self.sysctls.items()))
        return _SYSCTL_SECTION_RE.sub(lambda m: m.group(1) + body + m.group(2), sample, count=1)

    def _section(self, nonce: str, name: str, content: str, rc: int = 0) -> str:
        # emit(): the bytes, then a newline, then the end marker.
        return f"@@shoal {nonce} begin {name}\n{content}\n@@shoal {nonce} end {name} {rc}\n"

    def _snapshot(self, here: OnHost, which: str) -> str:
        body = "".join(f"{k}={self.sysctls.get(k, '')}\n" for k in here.keys)
        return self._section(here.nonce, f"{which}.sysctl", body) if here.keys else ""

    def phase(self, d: str, script: str) -> Reply:
        m = _RUN_NONCE_RE.search(script)
        assert m is not None, "a phase script prints its nonce first"
        nonce = m.group(1)
        snap = _SNAP_SYSCTL_RE.search(script)
        keys = tuple(snap.group(1).split()) if snap else ()
        steps = 1 + max((int(i) for i in _STARTED_RE.findall(script)), default=-1)
        commands: dict[int, list[str]] = {}
        for i, _j, argv in _COMMAND_RE.findall(script):
            commands.setdefault(int(i), []).append(argv)
        undo: dict[int, list[str]] = {}
        for i, j in re.findall(r"run u\.(\d+)\.(\d+) ", script):
            undo.setdefault(int(i), []).append(f"u.{i}.{j}")
        here = OnHost(nonce, keys, dict(self.sysctls), "set_deadline" in script, undo)
        self.dirs[d] = here
        m_ = f"@@shoal {nonce}"
        log = f"{m_} phase-begin 100.0\n" + self._snapshot(here, "pre")
        if here.armed:
            log += f"{m_} lockout armed systemd\n"
        failed: tuple[int, int] | None = None
        for i in range(steps):
            if self.drop_channel_after is not None and i == self.drop_channel_after:
                # The channel is gone; the phase goes on alone, and its log stays on the host.
                self._finish_alone(here, log, range(i, steps), commands)
                raise HostUnreachable(self.name, "connection lost")
            log += f"{m_} step-begin {i} 100.{i}\n"
            here.started.append(i)
            for j, argv in enumerate(commands.get(i, [])):
                rc = (
                    self.fail_step[1] if self.fail_step and self.fail_step[0] == i and j == 0 else 0
                )
                if rc == 0:
                    self._apply(argv)
                log += self._section(nonce, f"c.{i}.{j}", "" if rc == 0 else "sysctl: failed", rc)
                if rc:
                    failed = (i, rc)
                    break
            log += f"{m_} step-end {i} {failed[1] if failed else 0} 100.{i}5\n"
            if failed:
                break
        if failed is None:
            here.log = log + f"{m_} phase-end ok\n"
            return Reply(0, f"@@shoal-run {nonce}\n" + here.log)
        log += f"{m_} phase-end failed {failed[0]} {failed[1]}\n"
        here.lock = "phase"
        if here.armed:
            log += f"{m_} lockout disarmed\n"
        here.log = log + self.restore(here, "phase")
        return Reply(1, f"@@shoal-run {nonce}\n" + here.log)

    def _finish_alone(
        self, here: OnHost, log: str, rest: range, commands: Mapping[int, Sequence[str]]
    ) -> None:
        m_ = f"@@shoal {here.nonce}"
        for i in rest:
            log += f"{m_} step-begin {i} 100.{i}\n"
            here.started.append(i)
            for j, argv in enumerate(commands.get(i, [])):
                self._apply(argv)
                log += self._section(here.nonce, f"c.{i}.{j}", "")
            log += f"{m_} step-end {i} 0 100.{i}5\n"
        here.log = log + f"{m_} phase-end ok\n"

    def _apply(self, argv: str) -> None:
        words = argv.split()
        if words[:2] == ["sysctl", "-w"]:
            key, _, value = words[2].partition("=")
            self.sysctls[key] = value

    def restore(self, here: OnHost, by: str) -> str:
        """restore.sh, then snapshot.sh post: the undo of the started steps in reverse."""
        m_ = f"@@shoal {here.nonce}"
        out = f"{m_} rollback-begin {by}\n"
        for i in reversed(here.started):
            for name in here.undo.get(i, []):
                out += self._section(here.nonce, name, "")
        for k, v in here.before.items():
            if k not in self.restore_leaves:
                self.sysctls[k] = v
        out += f"{m_} rollback-end\n"
        return out + self._snapshot(here, "post")

    def timer_fires(self, here: OnHost) -> None:
        here.lock = "timer"
        m_ = f"@@shoal {here.nonce}"
        here.lockout_log = f"{m_} lockout fired 160.0\n" + self.restore(here, "timer")

    def confirm(self, here: OnHost) -> Reply:
        head = f"@@shoal-run {here.nonce}\n"
        if self.timer_first and here.lock is None:
            self.timer_fires(here)
        if here.lock is None:
            here.lock = "confirmed"
            return Reply(0, head + "@@shoal-confirm confirmed\n")
        return Reply(0, head + f"@@shoal-confirm restored {here.lock}\n" + here.lockout_log)

    def recover(self, here: OnHost) -> Reply:
        m_ = f"@@shoal {here.nonce}"
        out = f"@@shoal-run {here.nonce}\n"
        if here.lock is None or here.lock == "confirmed":
            if here.lock == "confirmed":
                out += f"{m_} recover-confirmed\n"
            elif here.armed:
                out += f"{m_} lockout disarmed\n"
            here.lock = "recover"
            out += self.restore(here, "recover")
        else:
            out += f"{m_} restore-by {here.lock}\n{m_} restore-done\n"
        return Reply(0, out + here.log + here.lockout_log)


# --- plans and settings ------------------------------------------------------------------------


def sysctl_step(
    host: str,
    k: int,
    key: str,
    value: str,
    *,
    old: str = "0",
    phase: Phase = Phase.REAL_SERVERS_PREPARE,
) -> Step:
    return Step(
        id=f"{host}/fake-{k}/{key}",
        host=host,
        state_id=f"fake-{k}",
        function="sysctl.present",
        subsystem="sysctl",
        phase=phase,
        description=f"set {key}",
        change=Change(before=old, after=value),
        commands=(("sysctl", "-w", f"{key}={value}"),),
        undo=(("sysctl", "-w", f"{key}={old}"),),
    )


def join_steps(host: str, phase: Phase = Phase.REAL_SERVERS_PREPARE) -> tuple[Step, ...]:
    """Two sysctl steps, like a real server's ARP settings for LVS-DR."""
    return (
        sysctl_step(host, 0, ARP_IGNORE, "1", phase=phase),
        sysctl_step(host, 1, ARP_ANNOUNCE, "2", phase=phase),
    )


def make_plan(steps_by_host: Mapping[str, Sequence[Step]]) -> Plan:
    hosts = {
        h: HostPlan(host=h, facts_digest="x", steps=tuple(s)) for h, s in steps_by_host.items()
    }
    return Plan(id="pfake1", revision="test", clusters=(), hosts=hosts)


def desired_for(hosts: Sequence[str], **apply: object) -> Desired:
    """A desired state with these hosts and `settings.apply`; the lock-out timer at 5 s."""
    inventory = {h: Host(name=h, address=f"10.99.0.{10 + n}") for n, h in enumerate(sorted(hosts))}
    return Desired(
        settings=Settings(apply=ApplySettings.model_validate({"lockout_timeout": 5, **apply})),
        inventory=Inventory(hosts=inventory),
        clusters={},
        known_hosts="",
    )


def fake_transport(*hosts: FakeHost, unreachable: Sequence[str] = ()) -> FakeTransport:
    return FakeTransport(hosts={h.name: h for h in hosts}, unreachable=set(unreachable))


def phase_calls(transport: FakeTransport) -> list[tuple[str, str]]:
    """(host, phase directory's last part) of every phase script, in the order they were sent."""
    out: list[tuple[str, str]] = []
    for c in transport.calls:
        m = _DIR_RE.search(c.script)
        if m is not None and 'setsid -w sh "$B/phase.sh"' in c.script:
            out.append((c.host, m.group(0).rsplit("/", 1)[1]))
    return out


def crashed_in(host: FakeHost, plan: Plan, phase: Phase, *, confirmed: bool) -> None:
    """Leave `host` as a controller that crashed would: its phase of `plan` ran (and was
    confirmed, or not), nobody saw the result."""
    hp = HostPhase(
        plan.id, phase, host.name, plan.hosts[host.name].steps, secrets.token_hex(8), 60.0, 5
    )
    host(Call(host.name, "script", SCRIPT_ARGV, build_phase_script(hp), None))
    if confirmed:
        host(
            Call(host.name, "script_fresh", SCRIPT_ARGV, build_confirm_script(plan.id, phase), None)
        )
