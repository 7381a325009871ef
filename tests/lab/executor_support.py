"""Helpers for the executor's lab tests: hand-built steps, raw host state, a transport.

The raw state is what the rollback must give back byte for byte: arptables-save,
iptables-save -t nat, ip6tables-save -t nat, the whole nft ruleset (stateless; tables in name
order, elements that expire left out), every address
(both families), the sysctls the steps touch and the managed files. Only the `#` comment lines
of the *-save tools are dropped, because they carry the time of the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from lab import Lab
from reconciler.apply.events import ApplyEvent
from reconciler.apply.executor import apply_plan
from reconciler.apply.followup_scripts import build_rollback_script
from reconciler.apply.phaselog import parse_log
from reconciler.apply.runresult import RunResult
from reconciler.desired.models import ApplySettings, Desired, Host, Inventory, Settings
from reconciler.plan.steps import Argv, Change, FileWrite, HostPlan, Phase, Plan, Step, Subsystem
from reconciler.transport.ssh import SSHTransport

VIP_OCTET = 177
TEST_DIR = "/etc/shoal-exec-test"
SYSCTL_CONF = f"{TEST_DIR}/sysctl.d/90-shoal-exec-test.conf"
NFT_FILE = f"{TEST_DIR}/arp.nft"
HOOK_DIR = "/usr/local/sbin"
SYSCTL_KEYS = (
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
    "net.ipv4.conf.lo.arp_ignore",
    "net.ipv4.conf.eth0.arp_ignore",
    "net.ipv4.conf.eth0.arp_announce",
)
# The files a real plan manages (persistence, ledger, the director's nft file).
PLAN_FILES = (
    "/etc/sysctl.d/90-shoal-lvs-dr.conf",
    "/usr/local/sbin/shoal-restore",
    "/etc/systemd/system/shoal-restore.service",
    "/var/lib/shoal/ledger.json",
    "/var/lib/shoal/nft/shoal_dsr.nft",
)


def vip(lab: Lab, octet: int = VIP_OCTET) -> str:
    return str(ipaddress.IPv4Network(lab.subnet)[octet])


def hook(host: str, k: int) -> str:
    """A command of step k that does nothing, until a test injects a failure or a hang."""
    return f"{HOOK_DIR}/shoal-exec-hook-{k}"


async def install_hooks(lab: Lab, host: str, count: int, body: str = "exit 0") -> None:
    script = "".join(
        f"printf '#!/bin/sh\\n{body}\\n' >{hook(host, k)}; chmod 0755 {hook(host, k)}\n"
        for k in range(count)
    )
    await lab.exec(host, ["sh", "-c", script])


def step(
    host: str,
    k: int,
    subsystem: Subsystem,
    commands: Sequence[Argv],
    undo: Sequence[Argv],
    *,
    phase: Phase = Phase.REAL_SERVERS_PREPARE,
    writes: Sequence[FileWrite] = (),
    with_hook: bool = True,
) -> Step:
    cmds = [*commands, (hook(host, k),)] if with_hook else list(commands)
    return Step(
        id=f"{host}/exec-test-{k}/apply",
        host=host,
        state_id=f"exec-test-{k}",
        function=f"{subsystem}.test",
        subsystem=subsystem,
        phase=phase,
        description=f"test step {k} ({subsystem})",
        change=Change(before=None, after=" ".join(commands[0]) if commands else "files"),
        commands=tuple(tuple(c) for c in cmds),
        undo=tuple(tuple(u) for u in undo),
        writes=tuple(writes),
    )


async def sysctl_values(lab: Lab, host: str) -> dict[str, str]:
    keys = SYSCTL_KEYS[:3]
    res = await lab.exec(host, ["sysctl", "-n", *keys])
    return dict(zip(keys, res.stdout.split(), strict=True))


def real_server_steps(
    lab: Lab, host: str, original: dict[str, str], phase: Phase = Phase.REAL_SERVERS_PREPARE
) -> list[Step]:
    """The join of a real server, by hand: every subsystem the executor snapshots."""
    v = vip(lab)
    nft_text = (
        "table arp shoal_exectest {\n"
        "  chain out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    arp saddr ip {v} arp saddr ip set {lab.host(host).address}\n"
        "  }\n"
        "}\n"
    )
    conf = "net.ipv4.conf.all.arp_ignore = 1\nnet.ipv4.conf.all.arp_announce = 2\n"
    ign, ann = SYSCTL_KEYS[0], SYSCTL_KEYS[1]
    arp = ("INPUT", "-d", v, "-j", "DROP")
    nat = ("-t", "nat", "{}", "PREROUTING", "-d", v, "-p", "tcp", "--dport", "8080")
    redirect = (*nat, "-j", "REDIRECT")
    add_nat = tuple("-A" if a == "{}" else a for a in redirect)
    del_nat = tuple("-D" if a == "{}" else a for a in redirect)
    nft_write = FileWrite(path=NFT_FILE, content=nft_text, mode="0600")
    return [
        step(host, 0, "sysctl", [("sysctl", "-w", f"{ign}=1")],
             [("sysctl", "-w", f"{ign}={original[ign]}")], phase=phase),
        step(host, 1, "sysctl", [("sysctl", "-w", f"{ann}=2")],
             [("sysctl", "-w", f"{ann}={original[ann]}")], phase=phase),
        step(host, 2, "file", [], [], phase=phase,
             writes=[FileWrite(path=SYSCTL_CONF, content=conf)]),
        step(host, 3, "arp", [("arptables", "-A", *arp)], [("arptables", "-D", *arp)],
             phase=phase),
        step(host, 4, "nft", [("nft", "-f", NFT_FILE)],
             [("nft", "delete", "table", "arp", "shoal_exectest")], phase=phase,
             writes=[nft_write]),
        step(host, 5, "addr", [("ip", "addr", "add", f"{v}/32", "dev", "lo")],
             [("ip", "addr", "del", f"{v}/32", "dev", "lo")], phase=phase),
        step(host, 6, "iptables", [("iptables", *add_nat)], [("iptables", *del_nat)],
             phase=phase),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def failing_hook(
    lab: Lab, host: str, k: int, *, exit_code: int = 1, hang: bool = False
) -> AsyncIterator[None]:
    """Step k's hook fails (or hangs) on `host` inside the block, and is harmless again after."""
    await lab.inject_failing_command(host, hook(host, k), exit_code=exit_code, hang=hang)
    try:
        yield
    finally:
        await lab.clear_injections(host)


async def joined_steps(lab: Lab, host: str) -> list[Step]:
    """`real_server_steps` for `host` undoing to its current sysctls, with their hooks in place."""
    steps = real_server_steps(lab, host, await sysctl_values(lab, host))
    await install_hooks(lab, host, len(steps))
    return steps


def ssh_blocking_step(host: str) -> Step:
    """A step that drops new SSH connections to `host` (the one in use goes on): nobody can
    confirm its phase, so only the host's own dead-man timer can undo it."""
    block = ("-p", "tcp", "--dport", "22", "--syn", "-j", "DROP")
    return step(host, 0, "iptables", [("iptables", "-I", "INPUT", *block)],
                [("iptables", "-D", "INPUT", *block)], with_hook=False)  # fmt: skip


async def filter_rules(lab: Lab, host: str) -> list[str]:
    """The host's iptables filter table, without the dated comment lines."""
    text = (await lab.exec(host, ["iptables-save", "-t", "filter"])).stdout
    return [ln for ln in text.splitlines() if not ln.startswith("#")]


def make_plan(steps_by_host: Mapping[str, Sequence[Step]], unreachable: Sequence[str] = ()) -> Plan:
    hosts = {
        h: HostPlan(host=h, facts_digest="test", steps=tuple(st)) for h, st in steps_by_host.items()
    }
    for h in unreachable:
        hosts[h] = HostPlan(host=h, facts_digest="", reachable=False, unknown_reason="test")
    return Plan(id=f"t{secrets.token_hex(6)}", revision="test", clusters=(), hosts=hosts)


def desired_for(lab: Lab, **apply: object) -> Desired:
    hosts = {
        name: Host(name=name, address=h.address, interface=h.interface)
        for name, h in lab.hosts.items()
    }
    return Desired(
        settings=Settings(apply=ApplySettings.model_validate(apply)),
        inventory=Inventory(hosts=hosts),
        clusters={},
        known_hosts=lab.known_hosts_path.read_text(encoding="utf-8"),
    )


@contextlib.asynccontextmanager
async def transport_for(lab: Lab, desired: Desired) -> AsyncIterator[SSHTransport]:
    s = desired.settings.apply
    async with SSHTransport(
        desired.inventory,
        lab.known_hosts_path,
        lab.client_key_path,
        connect_timeout=s.connect_timeout,
        command_timeout=s.command_timeout,
    ) as transport:
        yield transport


async def apply_steps(
    lab: Lab,
    steps_by_host: Mapping[str, Sequence[Step]],
    *,
    unreachable: Sequence[str] = (),
    on_event: Callable[[ApplyEvent], None] | None = None,
    **apply: object,
) -> RunResult:
    """Apply hand-built steps as one plan, with `apply` as the [settings.apply] of the run."""
    desired = desired_for(lab, **apply)
    async with transport_for(lab, desired) as t:
        plan = make_plan(steps_by_host, unreachable)
        return await apply_plan(plan, desired, t, on_event=on_event)


async def undo_phase(lab: Lab, plan_id: str, hosts: Sequence[str]) -> None:
    """Undo a successful apply with the phase's own restore script (kept on each host)."""
    async with transport_for(lab, desired_for(lab)) as t:
        for h in hosts:
            res = await t.run_script(h, build_rollback_script(plan_id, Phase.REAL_SERVERS_PREPARE))
            assert parse_log(res.stdout).rolled_back, res.stdout


def explain(result: RunResult) -> str:
    """A run's result for an assertion message (the per-phase detail left out)."""
    return result.model_dump_json(indent=1, exclude={"phases"})


async def raw_state(lab: Lab, host: str) -> dict[str, str]:
    """Everything a rollback must restore, as the tools print it (minus timestamps)."""
    commands = {
        "arptables": ["arptables-save"],
        "iptables_nat": ["iptables-save", "-t", "nat"],
        "ip6tables_nat": ["ip6tables-save", "-t", "nat"],
        "nft": ["nft", "-s", "list", "ruleset"],
        "addr": ["ip", "-j", "addr"],
        "sysctl": ["sysctl", *SYSCTL_KEYS],
        "files": [
            "sh",
            "-c",
            f"for f in {SYSCTL_CONF} {NFT_FILE} {' '.join(PLAN_FILES)}; do "
            'if [ -e "$f" ]; then echo "$f $(stat -c %a "$f")"; cat "$f"; '
            'else echo "$f absent"; fi; '
            f"done; ls -d {TEST_DIR} /var/lib/shoal/nft 2>&1; "
            "find /etc/systemd/system -printf '%p %l\\n' 2>&1 | sort",
        ],
    }
    # A fresh lab host's IPv6 link-local address is "tentative" for a moment (kernel DAD):
    # wait for that to settle, it is not ours to compare.
    for _ in range(50):
        res = await lab.exec(host, ["ip", "-j", "addr"])
        if '"tentative"' not in res.stdout:
            break
        await asyncio.sleep(0.1)
    out: dict[str, str] = {}
    for name, argv in commands.items():
        res = await lab.exec(host, argv, check=False)
        text = "".join(ln for ln in res.stdout.splitlines(True) if not ln.startswith("#"))
        if name == "nft":
            text = tables_in_name_order(without_expiring_elements(text))
        if name == "addr" and res.returncode == 0:
            text = without_link_state(text)
        out[name] = f"rc={res.returncode}\n{text}"
    return out


# The carrier comes and goes with the other end of a link (a test cuts and restores it): it is
# the link's state, not configuration a rollback restores; "UP" (set by ip link) stays.
_LINK_STATE_FLAGS = frozenset({"NO-CARRIER", "LOWER_UP", "M-DOWN", "DORMANT"})


def without_link_state(addr_json: str) -> str:
    """`ip -j addr` without each link's operstate and carrier flags."""
    links = json.loads(addr_json)
    for link in links:
        link.pop("operstate", None)
        link["flags"] = [f for f in link.get("flags", []) if f not in _LINK_STATE_FLAGS]
    return json.dumps(links, separators=(",", ":")) + "\n"


def without_expiring_elements(ruleset: str) -> str:
    """`nft list ruleset` without the `elements = {...}` of sets and maps whose elements expire
    (a timeout, or flags dynamic): those are traffic's state (the DSR director's flow maps,
    filled by every connection), not configuration a rollback restores. Other elements stay."""
    out: list[str] = []
    block: list[str] = []
    expiring = False
    for line in ruleset.splitlines(True):
        word = line.strip()
        if block or word.startswith("elements = {"):
            block.append(line)
            text = "".join(block)
            if text.count("{") == text.count("}"):
                if not expiring:
                    out.extend(block)
                block = []
            continue
        if word.startswith(("set ", "map ")):
            expiring = False
        elif word.startswith("timeout ") or (word.startswith("flags ") and "dynamic" in word):
            expiring = True
        out.append(line)
    return "".join(out + block)


def tables_in_name_order(ruleset: str) -> str:
    """`nft list ruleset` with its tables sorted by their `table FAMILY NAME` line, each table's
    text unchanged. The kernel lists tables in creation order, and a rollback that recreates a
    table a phase deleted (iptables-nft's empty nat tables) brings it back last."""
    tables: list[str] = []
    for line in ruleset.splitlines(True):
        if line.startswith("table ") or not tables:
            tables.append(line)
        else:
            tables[-1] += line
    return "".join(sorted(tables))


# A [[state]] whose own effect breaks web2 (its VIP's port 80 redirected to a port nothing
# listens on): every step applies, the verification with real traffic fails, every host is
# rolled back. `.format(vip=...)`.
WEB2_REDIRECT_AWAY = """
[[state]]
id = "web2-port-80-elsewhere"
function = "iptables.rule_present"
hosts = ["web2"]
args = {{ destination = "{vip}", protocol = "tcp", dport = 80, to_ports = 8099 }}
"""
