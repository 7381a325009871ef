"""Facts and plans read through a login without rights (a real user, real sshd, real `shoal
plan`).

One small lab (lvs1 lvs2 web1 web2 client1); inside web2 (its own /etc) a user `shoaltest` is
created that the inventory logs in as. Checked: the tools in /usr/sbin are found whatever the
login's PATH; a ledger that user cannot read (behind a 0700 directory, or a 0600 file) is
unknown, never absent; the plan refuses web2 first because the login is not root and become is
not set (naming host, user, uid and the fix), plans nothing there, and `shoal plan` exits 1 as
documented; `shoal apply` then changes nothing on any host. The lab goes away with the user
and everything planted on it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lab import Lab, Topology
from lab.nonroot import add_login_user
from reconciler.desired.loader import load_repository
from reconciler.facts.gather import gather_facts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import LEDGER_PATH, plan_desired
from reconciler.transport.ssh import SSHTransport

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
SHOAL = Path(sys.executable).with_name("shoal")
USER = "shoaltest"
# What the Debian tools packages put in /usr/sbin, which a non-root login's PATH lacks.
ARP_IGNORE = "net.ipv4.conf.all.arp_ignore"
SBIN_TOOLS = ("nft", "iptables", "iptables-save", "arptables", "sysctl", "ipvsadm")


@pytest_asyncio.fixture(loop_scope="session")
async def user_lab(session_token: str) -> AsyncIterator[Lab]:
    async with Lab.up(f"u{session_token}", Topology.build(2, 2, 1), ephemeral=True) as lab:
        await add_login_user(lab, "web2", USER)
        yield lab


def write_repo(lab: Lab, dest: Path) -> Path:
    lab.write_config_repo(ROOT / "fixtures/config-repo", dest)
    inventory = dest / "inventory.toml"
    text = re.sub(r"(?m)^(\[hosts\.web2\].*)$", rf'\1\nuser = "{USER}"', inventory.read_text())
    inventory.write_text(text)
    settings = dest / "shoal.toml"
    settings.write_text(settings.read_text().replace("[apply]\n", "[apply]\nconnect_timeout = 3\n"))
    return dest


def shoal_plan(lab: Lab, repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHOAL), "plan", str(repo), "--key", str(lab.client_key_path), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_non_root_login_finds_tools_and_an_unreadable_ledger_blocks_the_host(
    user_lab: Lab, tmp_path: Path
) -> None:
    lab = user_lab
    desired = load_repository(write_repo(lab, tmp_path / "repo"))
    assert desired.inventory.hosts["web2"].user == USER
    # The login really is that user, with its own PATH (no sbin directories).
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path,
                            connect_timeout=3) as t:  # fmt: skip
        who = await t.run("web2", ("sh", "-c", 'id -un; printf "%s\\n" "$PATH"'))
        user, path = who.stdout.split()
        assert user == USER and "/usr/sbin" not in path.split(":"), who.stdout
        facts = (await gather_facts(t, ["web2"], managed_paths(desired)))["web2"]
    assert facts.tools.value is not None, facts.tools.unknown_reason
    assert {k: facts.tools.value.get(k) for k in SBIN_TOOLS} == dict.fromkeys(SBIN_TOOLS, True)
    # No ledger yet: known and empty. The user cannot list rules, and says so: unknown.
    assert facts.ledger.known and facts.ledger.value is not None
    assert not facts.ledger.value.entries
    for fact in (facts.arptables, facts.nft, facts.iptables_nat):
        assert not fact.known and "not installed" not in str(fact.unknown_reason), fact
    assert facts.keepalived.value is not None and not facts.keepalived.value.running
    plan = plan_desired(desired, {"web2": facts})
    web2 = plan.hosts["web2"]
    # Reading worked as far as a user may read; changing needs root, so the plan stops first.
    assert facts.login.value is not None and facts.login.value.user == USER
    not_root = (
        f"web2: login user {USER} (uid {facts.login.value.uid}) is not root and become is not "
        'set: shoal changes need root; set become = "sudo" for web2 in inventory.toml (or under '
        "[login] in shoal.toml) and install what `shoal sudoers` prints"
    )
    assert web2.blocked == not_root and web2.steps == ()

    ledger = {"entries": {"addr.present": [f"{lab.host('lvs1').address}/32 dev lo"]},
              "sysctl_originals": {}}  # fmt: skip
    # A 0700 directory the user cannot search, then a 0600 file in a directory it can.
    for modes in ("700 644", "755 600"):
        dir_mode, file_mode = modes.split()
        await lab.exec("web2", ["sh", "-c", f"mkdir -p /var/lib/shoal && chmod {dir_mode} "
                                f"/var/lib/shoal && cat >{LEDGER_PATH} && chmod {file_mode} "
                                f"{LEDGER_PATH}"], input=json.dumps(ledger))  # fmt: skip
        async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path,
                                connect_timeout=3) as t:  # fmt: skip
            unread = (await gather_facts(t, ["web2"], managed_paths(desired)))["web2"]
        assert unread.ledger.unknown_reason == f"{LEDGER_PATH}: Permission denied", modes
        res = shoal_plan(lab, desired_repo := tmp_path / "repo")
        assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
        doc = json.loads(res.stdout)
        want = not_root
        assert doc["summary"]["hosts_blocked"] == {"web2": want}, (modes, doc["summary"])
        hp = doc["plan"]["hosts"]["web2"]
        assert hp["reachable"] and hp["blocked"] == want and hp["steps"] == [], (modes, hp)
        # The other hosts are planned as usual; only web2 is refused.
        assert doc["plan"]["hosts"]["web1"]["steps"] and not doc["plan"]["hosts"]["web1"].get(
            "blocked"
        )
        text = subprocess.run(
            [str(SHOAL), "plan", str(desired_repo), "--key", str(lab.client_key_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert text.returncode == 1 and f"blocked: {want}" in text.stdout, text.stdout[-3000:]
    # A keepalived of root's: the user may not see its network namespace, so whether it runs
    # on this host is unknown, not "stopped".
    conf = "/etc/keepalived/keepalived.conf"
    start = f"mkdir -p /etc/keepalived && : >{conf} && keepalived -p /run/keepalived.pid -f {conf}"
    await lab.exec("web2", ["sh", "-c", f"rm -rf /var/lib/shoal && {start}"])
    pid = (await _wait_for_pid(lab)).strip()
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path,
                            connect_timeout=3) as t:  # fmt: skip
        seen_facts = (await gather_facts(t, ["web2"], managed_paths(desired)))["web2"]
    assert seen_facts.keepalived.unknown_reason == f"/proc/{pid}/ns/net: Permission denied"
    assert seen_facts.ledger.known  # the ledger directory is gone: absent, and known to be
    await lab.exec("web2", ["sh", "-c", f"mkdir -p /var/lib/shoal && chmod 700 /var/lib/shoal && "
                            f"cat >{LEDGER_PATH}"], input=json.dumps(ledger))  # fmt: skip

    # `shoal apply --yes`: the run refuses (a blocked host stops it under the default policy)
    # and nothing changes anywhere: web1 keeps its kernel defaults, web2 its ledger.
    before = (await lab.exec("web1", ["sysctl", "-n", ARP_IGNORE])).stdout
    res = subprocess.run(
        [str(SHOAL), "apply", str(desired_repo), "--key", str(lab.client_key_path), "--yes",
         "--json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    run = json.loads(res.stdout)["run"]
    assert not run["ok"] and want in run["comment"], run["comment"]
    assert [(e["kind"], e["host"], e["message"]) for e in run["errors"]] == [
        ("FactsUnknown", "web2", want)
    ]
    assert run["hosts"] and all(r["result"] is None for st in run["hosts"].values() for r in st)
    assert (await lab.exec("web1", ["sysctl", "-n", ARP_IGNORE])).stdout == before
    seen = await lab.exec("web2", ["cat", LEDGER_PATH])
    assert json.loads(seen.stdout) == ledger


async def _wait_for_pid(lab: Lab) -> str:
    # keepalived writes its pid file once it has daemonised.
    for _ in range(100):
        res = await lab.exec("web2", ["cat", "/run/keepalived.pid"], check=False)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout
        await asyncio.sleep(0.05)
    raise AssertionError("keepalived wrote no pid file in 5 s")
