"""`shoal import --from-hosts` on a cluster built by hand the way the seed HOWTO says (issue 17).

The nftables director (lvs1 primary, lvs2 backup) is set up by shoal: a converge of a repo with
the two clusters. The real servers are then reset to bare hosts (shoal's rules, VIPs, ledger and
boot files removed) and built by hand with the HOWTO's commands: web1 and web3 with method 1,
chains corrected to INPUT/OUTPUT but the OUTPUT mangle rule in the HOWTO's `-d` form, and the VIP
added to eth0 with `ip addr add`; web2 with method 2, an iptables nat REDIRECT. Then, with the
`shoal import --from-hosts` and `shoal plan` commands themselves (one facts round trip per host
over SSH):

- the import names the seed `-d` rule on web1 and web3 and sets `adopt` for them only;
- the first plan's runtime steps are exactly the `-d` -> `-s` correction on web1 and web3 and
  nothing on web2 or the directors (the rest of the plan is each real server's boot form, which
  no hand-built host has, and its ledger);
- before the apply, web1 announces VIP1 when it speaks from it (the leak the pattern names);
  after it, ARP for both VIPs is answered by lvs1 alone and nobody else announces them, and
  client traffic through both VIPs reaches every real server.

Then adoption (the second test, from where the first left): web1 adopted its hand-made VIP and
INPUT rule in that first plan, so taking it out of the repository removes them from web1; web2
did not adopt, so taking it out leaves its hand-made REDIRECT rule alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import Lab, Topology
from lab.httpd import run_load, start_services, stop_services
from reconciler.desired.loader import load_repository
from reconciler.plan.steps import Plan
from tests.conftest import require_lab
from tests.lab.rollout_support import (
    PORT,
    converge,
    explain,
    pending,
    settings_toml,
    write_repo,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ARP_PROBE = Path(__file__).with_name("arp_probe.py")
RUNTIME = {"arp", "addr", "sysctl", "iptables", "nft", "ipvs", "keepalived"}
METHOD1 = ("web1", "web3")
METHOD2 = "web2"
SHOAL_FILES = ("/var/lib/shoal/ledger.json", "/usr/local/sbin/shoal-restore",
               "/etc/systemd/system/shoal-restore.service",
               "/etc/systemd/system/multi-user.target.wants/shoal-restore.service")  # fmt: skip
# The seed HOWTO, method 1 with the chains corrected ($1 VIP, $2 the real server's address).
HOWTO_METHOD1 = (
    'arptables -A INPUT -d "$1" -j DROP && '
    'arptables -A OUTPUT -d "$1" -j mangle --mangle-ip-s "$2" && ip addr add "$1" dev eth0'
)
# Method 2 ($1 VIP, $2 port).
HOWTO_METHOD2 = 'iptables -t nat -A PREROUTING -p tcp -d "$1" --dport "$2" -j REDIRECT'
# What shoal put on a real server, taken away by hand ($1 VIP, $2 address): a bare host again.
BARE = (
    'while arptables -D INPUT -d "$1" -j DROP 2>/dev/null; do :; done; '
    'while arptables -D OUTPUT -s "$1" -j mangle --mangle-ip-s "$2" 2>/dev/null; do :; done; '
    'while iptables -t nat -D PREROUTING -d "$1/32" -p tcp -m tcp --dport 80 -j REDIRECT '
    "2>/dev/null; do :; done; "
    'ip addr del "$1/32" dev eth0 2>/dev/null; nft delete table arp filter 2>/dev/null; '
    "nft delete table ip nat 2>/dev/null; true"
)


def cluster(name: str, vip: str, method: str, servers: tuple[str, ...]) -> str:
    rs = "".join(f'\n  [[service.real_server]]\n  host = "{h}"\n  weight = 1\n' for h in servers)
    return f"""\
[cluster]
name = "{name}"
directors = ["lvs1", "lvs2"]
director = "nftables"
arp_method = "{method}"

[[service]]
name = "tcp-80"
vip = "{vip}"
port = {PORT}
protocol = "tcp"
check = {{ type = "tcp" }}
{rs}"""


@dataclass
class Site:
    lab: Lab
    workdir: Path
    vip1: str
    vip2: str

    async def sh(self, host: str, script: str, *args: str) -> str:
        res = await self.lab.exec(host, ["sh", "-c", script, "sh", *args])
        return str(res.stdout)

    async def arp(self, vip: str, speaker: str | None) -> tuple[set[str], set[str]]:
        """MACs answering ARP for `vip` (client1 asks every 50 ms for 3 s) and MACs announcing
        it, while `speaker` (if any) forgets its neighbours and sends from the VIP, again and
        again, so its kernel must resolve a MAC with the VIP as sender."""
        probe = asyncio.ensure_future(self.lab.exec(
            "client1", ["python3", "-", "--vip", vip, "--interval", "0.05", "--duration", "3"],
            input=ARP_PROBE.read_text(), timeout=60))  # fmt: skip
        client = self.lab.hosts["client1"].address
        try:
            await asyncio.sleep(0.3)
            for _ in range(5 if speaker else 0):
                await self.sh(speaker or "", 'ip neigh flush dev eth0; ping -c 1 -W 1 -I "$1" '
                              '"$2" >/dev/null 2>&1; true', vip, client)  # fmt: skip
                await asyncio.sleep(0.2)
        finally:
            out = json.loads(str((await probe).stdout))
        return {str(m) for _, m in out["replies"]}, {str(m) for _, m in out["announcers"]}


@pytest.fixture(scope="module")
async def site(session_token: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    require_lab()
    async with Lab.up(f"h{session_token}", Topology.default(), ephemeral=True) as lab:
        await start_services(lab, [PORT])
        net = ipaddress.IPv4Network(lab.subnet)
        try:
            yield Site(lab, tmp_path_factory.mktemp("import"), str(net[100]), str(net[101]))
        finally:
            await stop_services(lab)


async def test_a_seed_built_cluster_imports_to_a_plan_of_exactly_its_correction(site: Site) -> None:
    lab, vip1, vip2 = site.lab, site.vip1, site.vip2
    # 1. The director, by shoal.
    setup = site.workdir / "setup"
    write_repo(lab, setup, None, settings_toml())
    (setup / "clusters" / "lvs-arptables.toml").write_text(
        cluster("lvs-arptables", vip1, "arptables", METHOD1))
    (setup / "clusters" / "lvs-redirect.toml").write_text(
        cluster("lvs-redirect", vip2, "redirect", (METHOD2,)))
    result, after = await converge(lab, load_repository(setup))
    assert result is not None and result.ok, explain(result) if result else ""
    assert after.empty, pending(after)
    # 2. The real servers, bare again, then by hand as the HOWTO says.
    for host in (*METHOD1, METHOD2):
        address = lab.hosts[host].address
        for vip in (vip1, vip2):
            await site.sh(host, BARE, vip, address)
        await lab.exec(host, ["rm", "-f", *SHOAL_FILES])
    for host in METHOD1:
        await site.sh(host, HOWTO_METHOD1, vip1, lab.hosts[host].address)
    await site.sh(METHOD2, HOWTO_METHOD2, vip2, str(PORT))
    # The seed's -d rule lets web1 announce VIP1 as ARP sender: the leak the import must name.
    answering, announcing = await site.arp(vip1, "web1")
    assert lab.hosts["web1"].mac.lower() in announcing, (answering, announcing)

    # 3. shoal import --from-hosts (the command itself; one facts round trip per host).
    target = site.workdir / "imported"
    rc, text = await shoal("import", str(target), "--from-hosts", str(setup / "inventory.toml"),
                           "--known-hosts", str(setup / "known_hosts"),
                           "--key", str(lab.client_key_path))  # fmt: skip
    assert rc == 0, text
    print(text)
    found = [ln for ln in text.splitlines() if ln.startswith("known-bad pattern: ")]
    assert sorted(ln.split(":", 2)[1].strip() for ln in found if "OUTPUT -d" in ln) == \
        sorted(METHOD1)  # fmt: skip
    # The directors' setup persists (shoal made it, with its boot form): nothing to say there.
    assert not [ln for ln in found if ln.startswith("known-bad pattern: lvs")], found
    inventory = (target / "inventory.toml").read_text()
    assert inventory.count("adopt = true") == 2
    imported = load_repository(target)
    assert {n: c.cluster.arp_method for n, c in imported.clusters.items()} == {
        "lvs-arptables": "arptables", "lvs-redirect": "redirect"}  # fmt: skip

    # 4. shoal plan: exactly the -d -> -s correction for method 1, nothing for method 2.
    rc, text = await shoal("plan", str(target), "--json", "--key", str(lab.client_key_path))
    assert rc == 2, text  # changes to make
    first = Plan.model_validate(json.loads(text)["plan"])
    assert _runtime(first) == {
        h: [f"add arptables rule OUTPUT -s {vip1} -j mangle --mangle-ip-s {lab.hosts[h].address}",
            f"remove arptables rule OUTPUT -d {vip1} -j mangle --mangle-ip-s "
            f"{lab.hosts[h].address}"]
        for h in METHOD1
    }, _runtime(first)  # fmt: skip
    for h in METHOD1:
        assert any("seed HOWTO's -d form" in n for n in first.hosts[h].notes), first.hosts[h].notes
    assert not any(hp.violations or hp.blocked for hp in first.hosts.values())
    assert not [s for h in ("lvs1", "lvs2") for s in first.hosts[h].steps], "directors changed"
    print(f"first plan: {len(pending(first))} steps, runtime {_runtime(first)}")

    # 5. Apply: the plan after it is empty, ARP for each VIP is answered by lvs1 alone, nobody
    # else announces it, and traffic reaches every real server.
    result, after = await converge(lab, imported)
    assert result is not None and result.ok, explain(result) if result else ""
    assert after.empty, pending(after)
    director = lab.hosts["lvs1"].mac.lower()
    for vip, speaker in ((vip1, "web1"), (vip1, "web3"), (vip2, None)):
        answering, announcing = await site.arp(vip, speaker)
        assert answering == {director}, (vip, answering)
        assert announcing <= {director}, (vip, speaker, announcing)
    for vip, servers in ((vip1, set(METHOD1)), (vip2, {METHOD2})):
        load = await run_load(lab, "client1", vip, PORT, count=40)
        assert load["failed"] == 0 and set(load["answered_by"]) == servers, load
    rules = await site.sh("web1", "arptables-save")
    assert f"-d {vip1} -j mangle" not in rules and "mangle -s " + vip1 in rules.replace(
        "-j mangle -s", "mangle -s"), rules


async def shoal(*argv: str) -> tuple[int, str]:
    """Run the `shoal` command of this environment; its exit status and stdout (+ stderr)."""
    exe = str(Path(sys.executable).with_name("shoal"))
    proc = await asyncio.create_subprocess_exec(exe, *argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    text = out.decode()
    if proc.returncode not in (0, 2):
        text += err.decode()
    return proc.returncode or 0, text


def _runtime(plan: Plan) -> dict[str, list[str]]:
    out = {h: [s.description for s in hp.steps if s.subsystem in RUNTIME]
           for h, hp in plan.hosts.items()}  # fmt: skip
    return {h: steps for h, steps in out.items() if steps}


def _without(repo: Path, cluster_name: str, host: str) -> None:
    path = repo / "clusters" / f"{cluster_name}.toml"
    block = re.compile(r'\n  \[\[service\.real_server\]\][^\n]*\n  host = "' + host +
                       r'"\n  weight = \d+\n')  # fmt: skip
    text = path.read_text()
    assert block.search(text), text
    path.write_text(block.sub("\n", text))


async def test_adopted_hand_made_state_leaves_with_its_real_server_and_foreign_stays(
    site: Site,
) -> None:
    lab, vip1, vip2 = site.lab, site.vip1, site.vip2
    target = site.workdir / "imported"
    _without(target, "lvs-arptables", "web1")
    result, after = await converge(lab, load_repository(target))
    assert result is not None and result.ok, explain(result) if result else ""
    assert after.empty, pending(after)
    assert vip1 not in await site.sh("web1", "ip -br addr show dev eth0")
    assert vip1 not in await site.sh("web1", "arptables-save")
    load = await run_load(lab, "client1", vip1, PORT, count=20)
    assert load["failed"] == 0 and set(load["answered_by"]) == {"web3"}, load
    answering, _ = await site.arp(vip1, None)
    assert answering == {lab.hosts["lvs1"].mac.lower()}, answering

    _without(target, "lvs-redirect", METHOD2)
    result, after = await converge(lab, load_repository(target))
    assert result is not None and result.ok, explain(result) if result else ""
    assert after.empty, pending(after)
    # web2 never adopted: its REDIRECT, made by hand, is not shoal's to remove.
    assert f"-d {vip2}/32" in await site.sh(METHOD2, "iptables-save -t nat")
