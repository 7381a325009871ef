"""The facts script and its parsing, run for real on this machine (sh -s, no SSH), and the
transport's failure paths against real endpoints on loopback (a closed port, an asyncssh server
with a key nobody pinned)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from reconciler.desired.models import Host, Inventory
from reconciler.errors import HostKeyRejected, HostUnreachable
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import (
    HostFacts,
    IpvsDestination,
    IpvsService,
    IpvsTable,
)
from reconciler.facts.parse import parse_facts_output
from reconciler.facts.script import MARKER, build_facts_script
from reconciler.transport.fake import FakeTransport
from reconciler.transport.ssh import SSHTransport
from tests.unit.facts.support import local_sh

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "facts" / "facts_script"


def test_script_is_valid_posix_sh() -> None:
    # Syntax only, under every shell a host may have as sh; what the script reads is checked
    # section by section against this machine in test_facts_script_here.py.
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            subprocess.run(
                [shell, "-n"], input=build_facts_script(["/etc/hosts"]), text=True, check=True
            )


@pytest.mark.parametrize(
    "path", ["relative/path", "/etc/$(reboot)", "/tmp/a b", "/etc/*", "/x\n/y", "/a;b", "/a|b"]
)
def test_unsafe_managed_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        build_facts_script([path])


async def test_gather_on_this_machine_reads_real_facts() -> None:
    shell = FakeTransport(default=local_sh)
    facts = await gather_facts(shell, ["here", "there"], {"here": ["/etc/hostname"]})
    assert [c.host for c in shell.calls] == ["here", "there"]
    here = facts["here"]
    assert here.hostname.value == socket.gethostname()
    assert here.sysctls.value is not None
    assert "net.ipv4.conf.lo.arp_ignore" in here.sysctls.value
    assert here.interfaces.value is not None
    assert any(i.name == "lo" for i in here.interfaces.value)
    assert here.files.value is not None and "/etc/hostname" in here.files.value
    assert "/etc/hostname" not in (facts["there"].files.value or {})
    # On this machine every tool is installed, so only systemd (not running here) may be unknown.
    assert set(here.unknown_facts) <= {"services", "services_enabled"}


def test_failed_section_is_unknown_never_empty() -> None:
    facts = parse_facts_output("h", (FIXTURES / "no_tools_on_path.txt").read_text())
    assert facts.arptables.value is None and "not installed" in str(facts.arptables.unknown_reason)
    assert facts.nft.unknown_reason is not None
    assert facts.interfaces.unknown_reason is not None
    assert facts.files.unknown_reason is not None
    # A fact that was read is still known: one missing tool does not blank the host.
    assert facts.sysctls.known and facts.hostname.known


def test_truncated_output_leaves_missing_sections_unknown() -> None:
    text = (FIXTURES / "fresh_namespace.txt").read_text()
    cut = text[: text.index(f"{MARKER} begin nft")]
    facts = parse_facts_output("h", cut)
    assert facts.arptables.known
    assert not facts.nft.known and not facts.ledger.known and not facts.tools.known


def test_output_without_header_is_all_unknown() -> None:
    facts = parse_facts_output("h", "Welcome to the machine\n")
    assert len(facts.unknown_facts) == len(HostFacts.fact_names())


def test_digest_ignores_connection_counters_but_not_weights() -> None:
    base = parse_facts_output("h", (FIXTURES / "fresh_namespace.txt").read_text())
    svc = IpvsService(protocol="tcp", address="10.77.0.100", port=80, scheduler="wlc")

    def with_dest(weight: int, active: int) -> HostFacts:
        dest = IpvsDestination(
            protocol="tcp",
            service_address="10.77.0.100",
            service_port=80,
            address="10.77.0.21",
            port=80,
            forward="route",
            weight=weight,
            active_connections=active,
            inactive_connections=active * 2,
        )
        table = IpvsTable(available=True, loaded=True, services=(svc,), destinations=(dest,))
        return base.model_copy(update={"ipvs": base.ipvs.of(table)})

    assert with_dest(1, 0).digest() == with_dest(1, 50).digest()
    assert with_dest(1, 0).digest() != with_dest(0, 0).digest()


# --- transport failure paths on loopback ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    return path


def _inventory(port: int) -> Inventory:
    # The model refuses loopback as a host address (rightly, for a config repo); unit tests must
    # stay on loopback, so this one inventory is built without validation.
    host = Host.model_construct(
        name="h1", address="127.0.0.2", port=port, user="root", interface="eth0", prefix=24
    )
    return Inventory.model_construct(hosts={"h1": host})


async def test_closed_port_is_unreachable_and_facts_all_unknown(client_key: Path) -> None:
    inventory = _inventory(_free_port())
    async with SSHTransport(inventory, "", client_key, connect_timeout=2) as transport:
        with pytest.raises(HostUnreachable):
            await transport.run("h1", ("true",))
        started = time.monotonic()
        facts = await gather_facts(transport, ["h1"])
    assert time.monotonic() - started < 2
    unknown = facts["h1"].unknown_facts
    assert len(unknown) == len(HostFacts.fact_names())
    assert all(reason.startswith("host unreachable: ") for reason in unknown.values())


class _AcceptAll(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True


async def test_unpinned_and_changed_host_keys_are_refused_with_fingerprint(
    client_key: Path,
) -> None:
    server_key = asyncssh.generate_private_key("ssh-ed25519")
    other_key = asyncssh.generate_private_key("ssh-ed25519")
    port = _free_port()
    server = await asyncssh.create_server(
        _AcceptAll, "127.0.0.2", port, server_host_keys=[server_key]
    )
    try:
        fingerprint = server_key.get_fingerprint("sha256")
        changed = f"[127.0.0.2]:{port} {other_key.export_public_key().decode().strip()}\n"
        for known_hosts in ("", changed):
            transport = SSHTransport(_inventory(port), known_hosts, client_key, connect_timeout=5)
            try:
                with pytest.raises(HostKeyRejected) as info:
                    await transport.run("h1", ("true",))
            finally:
                await transport.aclose()
            assert info.value.fingerprint == fingerprint
            assert fingerprint in str(info.value)
            assert transport.channels_opened["h1"] == 0
    finally:
        server.close()
        await server.wait_closed()
