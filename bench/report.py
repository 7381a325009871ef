"""Rendering the results: the text table, the ratios, the target lines, the markdown file (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.sshlog import PerHost
from bench.stats import Series, ratio

TOOLS_ORDER = ("shoal", "shoal-sudo", "floor", "ansible", "pyinfra")
SUDO = "shoal-sudo"


@dataclass(frozen=True, slots=True)
class PlanScale:
    real_servers: int
    vips: int
    load_s: float  # median of the repetitions
    plan_s: float
    peak_mib: float  # tracemalloc peak of load + plan
    steps: int
    replan_s: float = 0.0  # median: the same plan again with `PlanReuse`, facts built anew


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None
    limit: str  # e.g. "<= 1.3"
    met: bool | None  # None: could not be measured
    detail: str = ""

    def line(self) -> str:
        state = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        value = "-" if self.value is None else f"{self.value:.2f}"
        tail = f" ({self.detail})" if self.detail else ""
        return f"{state:12} {self.name}: {value} (target {self.limit}){tail}"


@dataclass(slots=True)
class Results:
    machine: dict[str, str]
    versions: dict[str, str]
    repetitions: int
    series: list[Series] = field(default_factory=list)
    plan_scale: list[PlanScale] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    # py-spy summaries of shoal's runs per host count, used if a target turns out missed.
    pending_profiles: dict[int, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def find(self, tool: str, action: str, hosts: int) -> Series | None:
        for s in self.series:
            if (s.tool, s.action, s.hosts) == (tool, action, hosts):
                return s
        return None


def _f(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(results: Results) -> list[list[str]]:
    """One row per (hosts, action, tool): times, CPU, SSH per host, ratio to shoal."""
    rows = []
    keys = sorted({(s.hosts, s.action) for s in results.series}, key=lambda k: (k[0], k[1]))
    for hosts, action in keys:
        shoal = results.find("shoal", action, hosts)
        for tool in TOOLS_ORDER:
            s = results.find(tool, action, hosts)
            if s is None:
                continue
            ssh = s.ssh()
            vs = ratio(s.wall(), shoal.wall()) if shoal is not None and tool != "shoal" else None
            rows.append(
                [
                    str(hosts),
                    action,
                    tool,
                    _f(s.wall("min")),
                    _f(s.wall()),
                    _f(s.cpu()),
                    ssh.describe() if ssh else "-",
                    "yes" if s.verified else f"NO ({len(s.valid)}/{len(s.samples)})",
                    _x(vs)
                    if tool != "floor"
                    else _x(ratio(shoal.wall(), s.wall()) if shoal else None),
                ]
            )
    return rows


HEADER = ["hosts", "action", "tool", "min", "median", "cpu", "ssh/host", "verified", "ratio"]


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    """A fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(out)


def render_markdown_table(rows: Sequence[Sequence[str]], header: Sequence[str] = HEADER) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def plan_scale_rows(results: Results) -> list[list[str]]:
    rows = []
    base = results.plan_scale[0] if results.plan_scale else None
    for p in results.plan_scale:
        growth = ratio(p.load_s + p.plan_s, base.load_s + base.plan_s) if base else None
        rows.append(
            [
                str(p.real_servers),
                str(p.vips),
                _f(p.load_s),
                _f(p.plan_s),
                _f(p.load_s + p.plan_s),
                _f(p.replan_s),
                f"{p.peak_mib:.0f} MiB",
                str(p.steps),
                _x(growth),
            ]
        )
    return rows


PLAN_HEADER = [
    "real servers", "VIPs", "load", "plan", "load+plan", "re-plan", "peak mem", "steps", "growth"
]  # fmt: skip

RATIO_NOTE = (
    "ratio: for shoal-sudo and a peer, its median / shoal median (how many times slower than "
    "shoal); for the floor, shoal median / floor median."
)
FIXED_NOTE = (
    "fixed: `shoal plan` on the in-sync hosts right after shoal's no-op check, run through "
    "`bench.timed_plan` (the `shoal` entry point with its SSH gather timed): the process's wall "
    "time less the gather, i.e. interpreter start, imports, load, plan and print."
)
SUDO_NOTE = (
    'shoal-sudo: the same repository plus `[login] user = "deploy"`, `become = "sudo"`: shoal '
    "logs in as deploy and runs every script through sudo and its wrapper (issue 15), on the "
    "same hosts in the same rotation (root logins stay allowed for the peers). Its ssh/host "
    "must equal shoal's: become adds no round trip."
)


@dataclass(frozen=True, slots=True)
class SudoParity:
    """shoal's and shoal-sudo's connections and channels per real server, one measurement."""

    hosts: int
    action: str
    shoal: PerHost
    sudo: PerHost

    @property
    def equal(self) -> bool:
        return _span_of(self.shoal) == _span_of(self.sudo)

    def detail(self) -> str:
        return f"shoal {self.shoal.describe()}, shoal-sudo {self.sudo.describe()}"

    def line(self) -> str:
        verdict = "equal, as they must be" if self.equal else "NOT EQUAL: become costs round trips"
        return f"{self.hosts} hosts, {self.action}: ssh/host {self.detail()}: {verdict}"


def _span_of(p: PerHost) -> tuple[int, int, int, int]:
    return (p.connections_min, p.connections_max, p.sessions_min, p.sessions_max)


def sudo_parity(results: Results) -> list[SudoParity]:
    """Every measurement that has both shoal and shoal-sudo with SSH counts (pure)."""
    out = []
    for hosts, action in sorted({(s.hosts, s.action) for s in results.series}):
        root, sudo = results.find("shoal", action, hosts), results.find(SUDO, action, hosts)
        a = root.ssh() if root is not None else None
        b = sudo.ssh() if sudo is not None else None
        if a is not None and b is not None:
            out.append(SudoParity(hosts, action, a, b))
    return out


def sudo_notes(results: Results) -> list[str]:
    """The notes on shoal-sudo's round trips against shoal's, one per measurement (pure)."""
    return [p.line() for p in sudo_parity(results)]


def render_text(results: Results) -> str:
    parts = [render_table(table_rows(results)), RATIO_NOTE]
    if results.plan_scale:
        parts += ["", render_table(plan_scale_rows(results), PLAN_HEADER)]
    parts += ["", "Targets:"] + ["  " + t.line() for t in results.targets]
    return "\n".join(parts)


def render_markdown(results: Results, title: str) -> str:
    out = [f"# {title}", ""]
    out += ["## Machine and versions", ""]
    out += [f"- {k}: {v}" for k, v in results.machine.items()]
    out += [f"- {k}: {v}" for k, v in results.versions.items()]
    out += [f"- repetitions per measurement: {results.repetitions} (min and median shown)", ""]
    out += ["## Lab runs", "", render_markdown_table(table_rows(results)), "", RATIO_NOTE, ""]
    out += [
        "ssh/host: TCP connections and session channels per real-server host, counted in each "
        "host's sshd log (`Connection from`, `Starting session`), min-max over the repetitions.",
        "",
    ]
    if any(s.tool == SUDO for s in results.series):
        out += [SUDO_NOTE, ""]
    if any(s.action == "fixed" for s in results.series):
        out += [FIXED_NOTE, ""]
    if results.plan_scale:
        out += ["## Plan scale (synthetic, in process)", ""]
        out += [render_markdown_table(plan_scale_rows(results), PLAN_HEADER), ""]
    out += ["## Targets", ""] + [f"- {t.line()}" for t in results.targets] + [""]
    if results.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in results.notes] + [""]
    if results.profiles:
        out += ["## Profiles (where a target is not met)", ""]
        for p in results.profiles:
            out += ["```", p.rstrip(), "```", ""]
    return "\n".join(out)


# --- targets ---------------------------------------------------------------------------------


def _at_most(name: str, value: float | None, limit: float, detail: str = "") -> Target:
    met = None if value is None else value <= limit
    return Target(name, value, f"<= {limit:g}", met, detail)


def _at_least(name: str, value: float | None, limit: float, detail: str = "") -> Target:
    met = None if value is None else value >= limit
    return Target(name, value, f">= {limit:g}", met, detail)


def evaluate_targets(results: Results, hosts: int) -> list[Target]:
    """The issue's targets, at `hosts` real servers (50 in a default run)."""

    def med(tool: str, action: str) -> float | None:
        s = results.find(tool, action, hosts)
        return s.wall() if s is not None else None

    out = [
        _at_most(
            f"no-op check {hosts} hosts, shoal / floor",
            ratio(med("shoal", "noop"), med("floor", "noop")),
            1.3,
        ),
        _at_least(
            f"no-op check {hosts} hosts, Ansible / shoal",
            ratio(med("ansible", "noop"), med("shoal", "noop")),
            8,
        ),
        _at_least(
            f"no-op check {hosts} hosts, pyinfra / shoal",
            ratio(med("pyinfra", "noop"), med("shoal", "noop")),
            5,
        ),
        _at_least(
            f"converge {hosts} hosts, Ansible / shoal",
            ratio(med("ansible", "converge"), med("shoal", "converge")),
            6,
        ),
        _at_least(
            f"converge {hosts} hosts, pyinfra / shoal",
            ratio(med("pyinfra", "converge"), med("shoal", "converge")),
            6,
        ),
    ]
    noop = results.find("shoal", "noop", hosts)
    ssh = noop.ssh() if noop else None
    if ssh is not None:
        exact = ssh.sessions_min == ssh.sessions_max == 1 and ssh.connections_max == 1
        out.append(
            Target(
                "facts: SSH round trips per host (shoal plan)",
                float(ssh.sessions_max),
                "== 1",
                exact,
                ssh.describe(),
            )
        )
    conv = results.find("shoal", "converge", hosts)
    cssh = conv.ssh() if conv else None
    if cssh is not None:
        # A real server is in one apply phase, one that arms the lock-out timer (ARP, VIP):
        # facts and that phase on one connection, then the confirmation over a NEW connection
        # (DESIGN.md: it proves the controller still gets in). Issue 22: channels = 1 + phases
        # + 1, connections = 2.
        exact = (
            cssh.sessions_min == cssh.sessions_max == 3
            and cssh.connections_min == cssh.connections_max == 2
        )
        out.append(
            Target(
                "apply: SSH channels per real server (facts + 1 phase + lock-out confirmation)",
                float(cssh.sessions_max),
                "== 3, over 2 connections",
                exact,
                cssh.describe(),
            )
        )
    for parity in sudo_parity(results):
        if parity.hosts == hosts:
            out.append(
                Target(
                    f"{parity.action}: SSH round trips per real server, shoal-sudo == shoal",
                    float(parity.sudo.sessions_max),
                    "== shoal's",
                    parity.equal,
                    parity.detail(),
                )
            )
    fixed = sorted((s for s in results.series if (s.tool, s.action) == ("shoal", "fixed")),
                   key=lambda s: s.hosts)  # fmt: skip
    if fixed:
        f = fixed[0]
        out.append(
            _at_most(
                f"fixed cost: shoal plan in sync, {f.hosts} real server(s) and the director, "
                "outside the SSH round trip, seconds",
                f.wall(),
                0.4,
                "interpreter start, imports, load, plan, print",
            )
        )
    big = [p for p in results.plan_scale if p.real_servers == 10_000]
    small = [p for p in results.plan_scale if p.real_servers == 1_000]
    if big:
        b = big[0]
        out.append(
            _at_most(
                "plan of 10,000 real servers (load + plan), seconds",
                b.load_s + b.plan_s,
                1.0,
                f"plan alone {b.plan_s:.2f}s; re-plan of unchanged hosts {b.replan_s:.2f}s",
            )
        )
        out.append(_at_most("peak memory of that load + plan, MiB", b.peak_mib, 200))
        if small:
            s = small[0]
            out.append(
                _at_most(
                    "growth 1,000 -> 10,000 real servers (load + plan)",
                    ratio(b.load_s + b.plan_s, s.load_s + s.plan_s),
                    12,
                )
            )
    return out
