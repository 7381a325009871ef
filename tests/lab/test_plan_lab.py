"""`shoal plan` and `plan_desired` on real lab hosts over SSH, for every ARP method and backend.

Every test brings up its own small lab (lvs1 lvs2 web1 web2 client1), because it configures
hosts by hand and plants foreign state; the lab goes away with everything on it.

Per case (an ARP method paired with a director backend, so each of both appears):
- fresh hosts: exactly the expected steps (ids, functions, commands, in order);
- web1 configured by hand with the same corrected commands, web2 half-configured: web1 gets no
  step that changes runtime state, only the persisted form (shoal does not adopt hand-made
  objects into its ledger, so it will never remove them); web2 gets exactly the missing steps;
- foreign state (another nft table, someone else's nat rule, an extra arptables rule, an
  address that is not ours) next to an object shoal's ledger lists as its own: only shoal's
  object is removed, the foreign ones are never in a step;
- a host whose arptables cannot be read (a failing arptables-save in its mount namespace) gets
  no step at all (it is blocked) and the plan says why.
The CLI test runs the real `shoal plan --json` as a subprocess for exit codes 2, 0 and 1.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from lab import Lab, Topology
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import managed_paths
from reconciler.plan.compile_director import IPVS_SYSCTLS
from reconciler.plan.planner import LEDGER_PATH, plan_desired
from reconciler.plan.steps import Plan, Step
from reconciler.transport.ssh import SSHTransport
from states.nft_dsr import SCRIPT_PATH

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
SHOAL = Path(sys.executable).with_name("shoal")
RUNTIME = frozenset({"sysctl", "addr", "arp", "nft", "iptables", "ipvs", "keepalived"})
PERSIST = ("persist-restore-script/write", "persist-restore-unit/write",
           "persist-restore-enabled/enable", "shoal-ledger/write")  # fmt: skip
VRRP_ONLY = "mkdir -p /etc/default && echo 'DAEMON_ARGS=\"--vrrp\"' >/etc/default/keepalived"
CASES = [("sysctl", "nftables"), ("arptables", "keepalived"), ("nft-arp", "ipvsadm"),
         ("redirect", "nftables")]  # fmt: skip


def _a(lab: Lab, octet: int) -> str:
    return str(ipaddress.IPv4Network(lab.subnet)[octet])


@pytest_asyncio.fixture(loop_scope="session")
async def plan_lab(session_token: str, request: pytest.FixtureRequest) -> AsyncIterator[Lab]:
    # One lab per test (ids of 8 characters a-z0-9); brought up in about a second or two.
    n = abs(hash(request.node.nodeid)) % 36
    lab_id = f"p{'0123456789abcdefghijklmnopqrstuvwxyz'[n]}{session_token[:6]}"
    async with Lab.up(lab_id, Topology.build(2, 2, 1), ephemeral=True) as lab:
        yield lab


def write_repo(lab: Lab, dest: Path, method: str, backend: str) -> Path:
    lab.write_config_repo(ROOT / "fixtures/config-repo", dest)
    cluster = dest / "clusters/web.toml"
    text = re.sub(r'(?m)^director = "\w+"', f'director = "{backend}"', cluster.read_text())
    text = re.sub(r'(?m)^arp_method = "[\w-]+"', f'arp_method = "{method}"', text)
    cluster.write_text(text)
    settings = dest / "shoal.toml"
    settings.write_text(settings.read_text().replace("[apply]\n", "[apply]\nconnect_timeout = 2\n"))
    return dest


async def gather_and_plan(lab: Lab, desired: Desired) -> tuple[dict[str, HostFacts], Plan]:
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path,
                            connect_timeout=3) as t:  # fmt: skip
        facts = await gather_facts(t, sorted(desired.inventory.hosts), managed_paths(desired))
    return facts, plan_desired(desired, facts)


def rows(plan: Plan, host: str) -> list[tuple[str, str, tuple[tuple[str, ...], ...]]]:
    return [(s.id, s.function, s.commands) for s in plan.hosts[host].steps]


def runtime_steps(plan: Plan, host: str) -> list[Step]:
    return [s for s in plan.hosts[host].steps if s.subsystem in RUNTIME]


# --- what a fresh lab must get ------------------------------------------------------------------


def expected_real_server(lab: Lab, method: str, host: str) -> list[tuple[str, str, object]]:
    """(step id, function, commands) of a fresh real server; nft-arp's text is checked apart."""
    vip, rip = _a(lab, 100), lab.host(host).address
    h = host
    if method == "sysctl":
        out: list[tuple[str, str, object]] = [
            (f"{h}/sysctl-net.ipv4.conf.{s}.{k}/set", "sysctl.present",
             (("sysctl", "-w", f"net.ipv4.conf.{s}.{k}={v}"),))
            for s in ("all", "eth0") for k, v in (("arp_ignore", "1"), ("arp_announce", "2"))
        ]  # fmt: skip
        out.append((f"{h}/vip-{vip}/add", "addr.present",
                    (("ip", "addr", "add", f"{vip}/32", "dev", "lo"),)))  # fmt: skip
        out.append((f"{h}/persist-sysctl-conf/write", "file.managed", ()))
    elif method == "arptables":
        out = [
            (f"{h}/arptables-input-{vip}/add", "arptables.rule_present",
             (("arptables", "-A", "INPUT", "-d", vip, "-j", "DROP"),)),
            (f"{h}/arptables-output-{vip}/add", "arptables.rule_present",
             (("arptables", "-A", "OUTPUT", "-s", vip, "-j", "mangle", "--mangle-ip-s", rip),)),
            (f"{h}/vip-{vip}/add", "addr.present",
             (("ip", "addr", "add", f"{vip}/32", "dev", "eth0"),)),
        ]  # fmt: skip
    elif method == "nft-arp":
        out = [
            (f"{h}/nft-arp-shoal_arp/create", "nft.table_present", "nft-arp"),
            (f"{h}/vip-{vip}/add", "addr.present",
             (("ip", "addr", "add", f"{vip}/32", "dev", "eth0"),)),
        ]  # fmt: skip
    else:
        out = [(f"{h}/redirect-tcp-{vip}-80/add", "iptables.rule_present",
                (("iptables", "-t", "nat", "-A", "PREROUTING", "-d", f"{vip}/32", "-p", "tcp",
                  "-m", "tcp", "--dport", "80", "-j", "REDIRECT"),))]  # fmt: skip
    return out + _persist(h)


def _persist(h: str, sysctl_conf: bool = False) -> list[tuple[str, str, object]]:
    # An IPVS director persists its IPVS sysctls (skipped at runtime on this kernel, which has
    # no IPVS; set at boot once ip_vs loads): the sysctl.d file comes first.
    conf = [(f"{h}/persist-sysctl-conf/write", "file.managed", ())] if sysctl_conf else []
    return [
        *conf,
        (f"{h}/persist-restore-script/write", "file.managed", ()),
        (f"{h}/persist-restore-unit/write", "file.managed", ()),
        (f"{h}/persist-restore-enabled/enable", "service.enabled",
         (("systemctl", "enable", "shoal-restore.service"),)),
        (f"{h}/shoal-ledger/write", "file.managed", ()),
    ]  # fmt: skip


def _healthd(h: str) -> list[tuple[str, str, object]]:
    # shoal-healthd on an ipvsadm or nftables director (reconciler.plan.compile_health); the
    # lab's hosts run no systemd, so nothing starts it (a note of the plan says so).
    return [
        (f"{h}/healthd-agent/write", "file.managed", ()),
        (f"{h}/healthd-config/write", "file.managed", ()),
        (f"{h}/healthd-unit/write", "file.managed", ()),
        (f"{h}/healthd-enabled/enable", "service.enabled",
         (("systemctl", "enable", "shoal-healthd.service"),)),
    ]  # fmt: skip


def expected_director(lab: Lab, backend: str, host: str) -> list[tuple[str, str, object]]:
    vip, h = _a(lab, 100), host
    primary = host == "lvs1"
    script = (
        "command -v arping >/dev/null 2>&1 || exit 0; "
        'arping -U -c 1 -I "$1" "$2" >/dev/null || true'
    )
    announce = ("sh", "-c", script, "sh", "eth0", vip)
    add = (("ip", "addr", "add", f"{vip}/32", "dev", "eth0"), announce)
    vip_add = [(f"{h}/director-vip:web:{vip}/add", "addr.present", add)] if primary else []
    if backend == "nftables":
        nft = [(f"{h}/nft-dsr/apply", "nft.dsr_table",
                (("nft", "-c", "-f", SCRIPT_PATH), ("nft", "-f", SCRIPT_PATH)))]  # fmt: skip
        return nft + vip_add + _healthd(h) + _persist(h)
    if backend == "keepalived":
        new, conf = "/etc/keepalived/keepalived.conf.shoal-new", "/etc/keepalived/keepalived.conf"
        return [
            (f"{h}/keepalived-conf/final/validate", "keepalived.config",
             (("keepalived", "-t", "-f", new),)),
            (f"{h}/keepalived-conf/final/install", "keepalived.config", (("mv", "-f", new, conf),)),
            (f"{h}/keepalived-conf/final/reload", "keepalived.config", "reload"),
            *_persist(h, sysctl_conf=True),
        ]  # fmt: skip
    svc = f"{vip}:80"
    ipvs: list[tuple[str, str, object]] = [
        (f"{h}/kmod-ip_vs/load", "kmod.present", (("modprobe", "ip_vs"),)),
        (f"{h}/ipvs-svc:web:http/add", "ipvs.service_present",
         (("ipvsadm", "-A", "-t", svc, "-s", "wlc"),)),
    ]  # fmt: skip
    for rs, weight in (("web1", 1), ("web2", 2)):
        rip = f"{lab.host(rs).address}:80"
        ipvs += [
            (f"{h}/ipvs-rs:web:http:{rs}/add", "ipvs.real_server_present",
             (("ipvsadm", "-a", "-t", svc, "-r", rip, "-g", "-w", "0"),)),
            (f"{h}/ipvs-rs:web:http:{rs}/weight", "ipvs.real_server_present",
             (("ipvsadm", "-e", "-t", svc, "-r", rip, "-g", "-w", str(weight)),)),
        ]  # fmt: skip
    return ipvs + vip_add + _healthd(h) + _persist(h, sysctl_conf=True)


def check_exact(got: Sequence[tuple[str, str, tuple[tuple[str, ...], ...]]],
                want: Sequence[tuple[str, str, object]]) -> None:  # fmt: skip
    assert [(i, f) for i, f, _ in got] == [(i, f) for i, f, _ in want]
    for (sid, _, commands), (_, _, expected) in zip(got, want, strict=True):
        if expected == "nft-arp":
            (argv,) = commands
            assert argv[:3] == ("sh", "-c", 'printf "%s" "$1" | nft -f -'), sid
            assert "arp operation request arp daddr ip @vips drop" in argv[4]
        elif expected == "reload":
            (argv,) = commands
            assert argv[:2] == ("sh", "-c") and "keepalived" in argv[2], sid
        else:
            assert commands == expected, sid


# --- doing it by hand ---------------------------------------------------------------------------


async def by_hand(lab: Lab, steps: Sequence[Step]) -> None:
    """Run steps' files and commands directly on the host, as an operator would, no shoal."""
    for step in steps:
        for w in step.writes:
            await lab.exec(step.host, ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1" && '
                                       'chmod "$2" "$1"', "sh", w.path, w.mode],
                           input=w.content)  # fmt: skip
        for argv in step.commands:
            await lab.exec(step.host, list(argv))


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "backend"), CASES)
async def test_fresh_hand_made_and_half_configured(
    plan_lab: Lab, tmp_path: Path, method: str, backend: str
) -> None:
    lab = plan_lab
    started = time.monotonic()
    desired = load_repository(write_repo(lab, tmp_path / "repo", method, backend))
    _, fresh = await gather_and_plan(lab, desired)

    for host in ("web1", "web2"):
        check_exact(rows(fresh, host), expected_real_server(lab, method, host))
        assert not fresh.hosts[host].skipped
    for host in ("lvs1", "lvs2"):
        check_exact(rows(fresh, host), expected_director(lab, backend, host))
        if backend != "nftables":
            # The IPVS sysctls cannot be set on this kernel, and the plan says why.
            why = {s.state_id: s.reason for s in fresh.hosts[host].skipped}
            assert set(why) == {f"ipvs-sysctl:{key}" for key in IPVS_SYSCTLS}, why
            assert all("no ip_vs module" in reason for reason in why.values()), why
    if backend == "ipvsadm":
        # This kernel has no IPVS: the plan says so first, in a step that will fail.
        kmod = fresh.hosts["lvs1"].steps[0]
        assert "no ip_vs module" in kmod.description and "will fail" in kmod.description

    # web1 fully by hand (the same corrected commands), web2 only its first runtime step.
    web1 = runtime_steps(fresh, "web1")
    web2 = runtime_steps(fresh, "web2")
    await by_hand(lab, web1)
    await by_hand(lab, web2[:1])
    # keepalived by hand: its config installed and the daemon started (it lives in the lab).
    # This kernel has no IPVS, so keepalived runs its VRRP part only, as an operator would set
    # it up on such a host (Debian's unit reads DAEMON_ARGS from /etc/default/keepalived).
    directors = [] if backend == "ipvsadm" else [
        s for h in ("lvs1", "lvs2") for s in runtime_steps(fresh, h)
    ]  # fmt: skip
    if backend == "keepalived":
        for host in ("lvs1", "lvs2"):
            await lab.exec(host, ["sh", "-c", VRRP_ONLY])
    await by_hand(lab, directors)
    after_facts, after = await gather_and_plan(lab, desired)

    # Hand-made: no runtime change at all; what is left persists it and records only the files
    # shoal itself will create (the hand-made objects are not adopted).
    hand_hosts = ["web1"] + ([] if backend == "ipvsadm" else ["lvs1", "lvs2"])
    for host in hand_hosts:
        steps = after.hosts[host].steps
        if backend == "keepalived" and host.startswith("lvs"):
            info = after_facts[host].keepalived.value
            assert info is not None and info.config_sha256 and info.running, host
        assert not [s.id for s in steps if s.subsystem in RUNTIME], host
        assert {s.function for s in steps} <= {"file.managed", "service.enabled"}, host
        ledger = json.loads(next(w.content for s in steps for w in s.writes
                                 if w.path == LEDGER_PATH))  # fmt: skip
        # Nothing made by hand is recorded, on directors either: the DSR table and keepalived's
        # real servers found in sync stay foreign without adopt (a keepalived real server that
        # leaves is drained all the same: tests/unit/plan/test_director_ledger.py).
        # Every director and real server has shoal's boot persistence (a keepalived director
        # for its IPVS sysctls: keepalived.conf persists the rest).
        files = {"file.managed", "service.enabled"}
        assert set(ledger["entries"]) == files, ledger
        assert ledger["sysctl_originals"] == {}
    # Half-configured: exactly the missing steps, in the same order with the same commands.
    done = {web2[0].id}
    want = [r for r in rows(fresh, "web2") if r[0] not in done]
    assert [r for r in rows(after, "web2") if r[0] != "web2/shoal-ledger/write"] == [
        r for r in want if r[0] != "web2/shoal-ledger/write"
    ]
    assert time.monotonic() - started < 30


async def test_foreign_state_survives_and_only_ledger_objects_go(
    plan_lab: Lab, tmp_path: Path
) -> None:
    lab = plan_lab
    desired = load_repository(write_repo(lab, tmp_path / "repo", "arptables", "nftables"))
    vip, ours, foreign_vip = _a(lab, 100), _a(lab, 150), _a(lab, 151)
    rip = lab.host("web1").address
    # Someone else's objects, some of them shaped exactly like shoal's.
    await lab.exec("web1", ["sh", "-c", "\n".join([
        f"ip addr add {foreign_vip}/32 dev eth0",
        f"arptables -A INPUT -d {foreign_vip} -j DROP",
        f"arptables -A OUTPUT -s {foreign_vip} -j mangle --mangle-ip-s {rip}",
        "iptables -t nat -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 80",
        "nft add table inet theirs",
        "nft add chain inet theirs input '{ type filter hook input priority 0; }'",
        "nft add rule inet theirs input tcp dport 9 drop",
        "nft add table arp shoal_theirs",
    ])])  # fmt: skip
    # An address and a rule shoal created in an earlier revision (its ledger says so).
    await lab.exec("web1", ["sh", "-c", f"ip addr add {ours}/32 dev eth0 && "
                            f"arptables -A INPUT -d {ours} -j DROP"])  # fmt: skip
    ledger = {"entries": {"addr.present": [f"{ours}/32 dev eth0"],
                          "arptables.rule_present": [f"INPUT -d {ours} -j DROP"]},
              "sysctl_originals": {}}  # fmt: skip
    await lab.exec("web1", ["sh", "-c", f"mkdir -p /var/lib/shoal && cat >{LEDGER_PATH}"],
                   input=json.dumps(ledger))  # fmt: skip
    facts, plan = await gather_and_plan(lab, desired)
    assert facts["web1"].ledger.known
    steps = plan.hosts["web1"].steps
    removals = [(s.id, s.commands) for s in steps if s.id.split("/")[1].startswith("remove-")]
    assert removals == [
        (f"web1/remove-addr-{ours}_32_dev_eth0/delete",
         (("ip", "addr", "del", f"{ours}/32", "dev", "eth0"),)),
        (f"web1/remove-arptables-INPUT_-d_{ours}_-j_DROP/delete",
         (("arptables", "-D", "INPUT", "-d", ours, "-j", "DROP"),)),
    ]  # fmt: skip
    # The ARP suppression of the VIP is still added; nothing names a foreign object.
    assert f"web1/arptables-input-{vip}/add" in [s.id for s in steps]
    everything = json.dumps([s.model_dump(mode="json") for hp in plan.hosts.values()
                             for s in hp.steps])  # fmt: skip
    for foreign in (foreign_vip, "8080", "theirs", "dport 9"):
        assert foreign not in everything, foreign
    for hp in plan.hosts.values():
        for s in hp.steps:
            for argv in (*s.commands, *s.undo):
                assert not {"-F", "-C", "flush", "--flush"} & set(argv), (s.id, argv)


async def test_unreadable_fact_blocks_removal_and_says_why(plan_lab: Lab, tmp_path: Path) -> None:
    lab = plan_lab
    desired = load_repository(write_repo(lab, tmp_path / "repo", "arptables", "nftables"))
    stale = _a(lab, 152)
    await lab.exec("web1", ["arptables", "-A", "INPUT", "-d", stale, "-j", "DROP"])
    ledger = {"entries": {"arptables.rule_present": [f"INPUT -d {stale} -j DROP"]},
              "sysctl_originals": {}}  # fmt: skip
    await lab.exec("web1", ["sh", "-c", f"mkdir -p /var/lib/shoal && cat >{LEDGER_PATH}"],
                   input=json.dumps(ledger))  # fmt: skip
    _, readable = await gather_and_plan(lab, desired)
    assert f"web1/remove-arptables-INPUT_-d_{stale}_-j_DROP/delete" in [
        s.id for s in readable.hosts["web1"].steps
    ]
    for tool in ("/usr/sbin/arptables-save", "/usr/sbin/arptables"):
        await lab.inject_failing_command("web1", tool, exit_code=2)
    try:
        facts, plan = await gather_and_plan(lab, desired)
    finally:
        await lab.clear_injections("web1")
    assert not facts["web1"].arptables.known
    hp = plan.hosts["web1"]
    # Blocked: no step at all (a VIP on eth0 without its ARP rules would answer ARP for it).
    assert hp.reachable and hp.steps == ()
    assert hp.blocked is not None and hp.blocked.startswith("web1: ") and "arptables" in hp.blocked
    reasons = {s.state_id: s.reason for s in hp.skipped}
    why = reasons[f"remove-arptables-INPUT_-d_{stale}_-j_DROP"]
    assert "not removing" in why and "arptables" in why, reasons
    # The rules shoal would add are not planned blind either, and say so.
    assert "cannot plan" in reasons[f"arptables-input-{_a(lab, 100)}"]
    # web2 is untouched by web1's trouble.
    assert [s.id for s in runtime_steps(plan, "web2")] == [
        s.id for s in runtime_steps(readable, "web2")
    ]


def _shoal_plan(lab: Lab, repo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHOAL), "plan", str(repo), "--key", str(lab.client_key_path), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_cli_exit_codes_changes_in_sync_and_error(plan_lab: Lab, tmp_path: Path) -> None:
    lab = plan_lab
    repo = write_repo(lab, tmp_path / "repo", "sysctl", "nftables")
    res = _shoal_plan(lab, repo, "--json")
    assert res.returncode == 2, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert doc["exit_status"] == 2 and not doc["summary"]["in_sync"]
    assert doc["summary"]["hosts_changing"] == ["lvs1", "lvs2", "web1", "web2"]
    assert "client1" not in doc["plan"]["hosts"]  # nothing of shoal's there, nothing planned
    got = [s["id"] for s in doc["plan"]["hosts"]["web1"]["steps"]]
    assert got == [i for i, _, _ in expected_real_server(lab, "sysctl", "web1")]

    # Every step of the plan done (by hand here: files written, commands run, the ledger as
    # planned): the hosts are what the repository says, so the plan is empty, exit 0.
    desired = load_repository(repo)
    _, plan = await gather_and_plan(lab, desired)
    for hp in plan.hosts.values():
        await by_hand(lab, hp.steps)
    res = _shoal_plan(lab, repo, "--json")
    assert res.returncode == 0, res.stdout[-3000:]
    doc = json.loads(res.stdout)
    assert doc["summary"]["in_sync"] and doc["summary"]["steps"] == 0

    # A host that cannot be reached: exit 1, and the plan says which and why.
    await lab.set_link("web2", False)
    try:
        res = _shoal_plan(lab, repo, "--json")
    finally:
        await lab.set_link("web2", True)
    assert res.returncode == 1, res.stdout[-3000:]
    doc = json.loads(res.stdout)
    assert doc["summary"]["hosts_unreachable"] == ["web2"]
    web2 = doc["plan"]["hosts"]["web2"]
    assert not web2["reachable"] and web2["steps"] == [] and web2["unknown_reason"]
