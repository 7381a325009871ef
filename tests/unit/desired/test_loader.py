"""The config repository loader and `shoal validate`, on the example and the invalid fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.desired.loader import load_repository, load_tree, read_tree, render_key_path
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "fixtures" / "config-repo"
INVALID = sorted(p for p in (ROOT / "fixtures" / "invalid").iterdir() if p.is_dir())
runner = CliRunner()


def test_example_repository_loads() -> None:
    desired = load_repository(EXAMPLE, revision="abc123")
    assert desired.revision == "abc123"
    assert desired.settings.approval == "manual"
    assert desired.settings.verify.clients == ("client1",)
    assert sorted(desired.inventory.hosts) == ["client1", "lvs1", "lvs2", "web1", "web2", "web3"]
    assert desired.inventory.hosts["web3"].address == "10.77.0.23"
    web = desired.clusters["web"]
    assert web.cluster.directors == ("lvs1", "lvs2")
    assert web.cluster.director == "nftables"
    assert web.cluster.arp_method == "sysctl"
    (http,) = web.services
    assert (http.vip, http.port, http.protocol) == ("10.77.0.100", 80, "tcp")
    assert [(r.host, r.weight) for r in http.real_servers] == [("web1", 1), ("web2", 2)]
    assert "10.77.0.11 ssh-ed25519 " in desired.known_hosts


def test_load_tree_equals_load_repository() -> None:
    files = read_tree(EXAMPLE)
    assert set(files) == {"shoal.toml", "inventory.toml", "known_hosts", "clusters/web.toml"}
    assert load_tree(files, "r1") == load_repository(EXAMPLE, "r1")


def test_shoal_toml_is_optional() -> None:
    files = read_tree(EXAMPLE)
    del files["shoal.toml"]
    assert load_tree(files).settings.verify.clients == ()


def test_validate_example_exits_0() -> None:
    result = runner.invoke(app, ["validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid: 1 cluster, 1 service, 2 real servers, 6 hosts" in result.output


def test_validate_example_json() -> None:
    result = runner.invoke(app, ["validate", "--json", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document == {
        "valid": True,
        "summary": {"clusters": 1, "services": 1, "real_servers": 2, "hosts": 6},
    }


def test_validate_console_script_subprocess() -> None:
    shoal = Path(sys.executable).parent / "shoal"
    ok = subprocess.run(
        [str(shoal), "validate"], cwd=EXAMPLE, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(".: valid: 1 cluster")
    case = ROOT / "fixtures" / "invalid" / "unknown-host-real-server"
    bad = subprocess.run(
        [str(shoal), "validate", str(case)], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert (
        'clusters/web.toml:22:10: service "http" > real_server 2 > host: unknown host "web9"'
        in bad.stdout.splitlines()
    )


@pytest.mark.parametrize("case", INVALID, ids=[p.name for p in INVALID])
def test_invalid_case_reports_expected_lines(case: Path) -> None:
    expected = (case / "expected.txt").read_text().splitlines()
    assert expected, "every invalid case states the lines it must produce"
    result = runner.invoke(app, ["validate", str(case)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[:-1] == expected
    plural = "" if len(expected) == 1 else "s"
    assert lines[-1] == f"{case}: {len(expected)} problem{plural}"
    # Pydantic's wording and documentation links never reach the operator.
    assert "pydantic" not in result.output
    assert "Input should" not in result.output


@pytest.mark.parametrize("case", INVALID, ids=[p.name for p in INVALID])
def test_invalid_case_raises_with_every_issue(case: Path) -> None:
    with pytest.raises(DesiredStateInvalid) as info:
        load_repository(case)
    assert [str(i) for i in info.value.issues] == (case / "expected.txt").read_text().splitlines()


def test_validate_json_lists_issues() -> None:
    case = ROOT / "fixtures" / "invalid" / "wrong-types-and-keys"
    result = runner.invoke(app, ["validate", "--json", str(case)])
    assert result.exit_code == 1
    document = json.loads(result.output)
    assert document["valid"] is False
    port = next(i for i in document["issues"] if i["key_path"] == 'service "http" > port')
    assert port == {
        "file": "clusters/web.toml",
        "line": 11,
        "column": 8,
        "key_path": 'service "http" > port',
        "message": 'must be an integer, got a string ("80")',
        "text": 'clusters/web.toml:11:8: service "http" > port: '
        'must be an integer, got a string ("80")',
    }


def test_missing_directory_is_an_issue(tmp_path: Path) -> None:
    with pytest.raises(DesiredStateInvalid) as info:
        load_repository(tmp_path / "nope")
    assert info.value.issues[0].message == "not a directory"


def test_not_utf8_and_end_of_document_errors() -> None:
    files = read_tree(EXAMPLE)
    files["shoal.toml"] = b"approval = \xff\n"
    files["clusters/web.toml"] = b'[cluster]\nname = "web'
    with pytest.raises(DesiredStateInvalid) as info:
        load_tree(files)
    assert [str(i) for i in info.value.issues] == [
        "shoal.toml: not UTF-8 text (byte 11)",
        "clusters/web.toml:2:12: TOML syntax error: Unterminated string",
    ]


def test_a_broken_service_does_not_hide_problems_elsewhere() -> None:
    files = read_tree(EXAMPLE)
    text = files["clusters/web.toml"].decode()
    text = text.replace("port = 80", "port = 80\nbogus = 1").replace('"web2"', '"nosuch"')
    files["clusters/web.toml"] = text.encode()
    with pytest.raises(DesiredStateInvalid) as info:
        load_tree(files)
    messages = [(i.key_path, i.message) for i in info.value.issues]
    assert ('service "http" > real_server 2 > host', 'unknown host "nosuch"') in messages
    assert any(path == 'service "http" > bogus' for path, _ in messages)


def test_two_keepalived_clusters_with_distinct_vrids_are_valid() -> None:
    files = read_tree(EXAMPLE)
    web = files["clusters/web.toml"].decode().replace('"nftables"', '"keepalived"')
    files["clusters/web.toml"] = web.encode()
    files["clusters/api.toml"] = b"""
[cluster]
name = "api"
directors = ["lvs1", "lvs2"]
director = "keepalived"
vrrp = { virtual_router_id = 52 }

[[service]]
name = "api"
vip = "10.77.0.100"
port = 8080

  [[service.real_server]]
  host = "web3"
"""
    desired = load_tree(files)
    assert sorted(desired.clusters) == ["api", "web"]


def test_inventory_non_default_port_needs_bracketed_known_hosts_entry() -> None:
    files = read_tree(EXAMPLE)
    inventory = files["inventory.toml"].decode()
    inventory = inventory.replace('address = "10.77.0.31"', 'address = "10.77.0.31"\nport = 2222')
    files["inventory.toml"] = inventory.encode()
    with pytest.raises(DesiredStateInvalid) as info:
        load_tree(files)
    assert [str(i) for i in info.value.issues] == [
        'known_hosts: no key for host "client1" ([10.77.0.31]:2222)'
    ]
    known = files["known_hosts"].decode().replace("10.77.0.31 ", "[10.77.0.31]:2222 ")
    files["known_hosts"] = known.encode()
    assert load_tree(files).inventory.hosts["client1"].port == 2222


def test_render_key_path() -> None:
    data = {"service": [{"name": "http", "real_server": [{"host": "a"}, {"host": "b"}]}]}
    assert render_key_path(("service", 0, "real_server", 1, "host"), data) == (
        'service "http" > real_server 2 > host'
    )
    assert render_key_path(("hosts", "web1", "address")) == 'host "web1" > address'
    assert render_key_path(("cluster", "directors", 0)) == "cluster > directors 1"


def test_desired_round_trips_through_json() -> None:
    # The store keeps Desired as JSON; strict models must read their own output back.
    desired = load_repository(EXAMPLE, "r2")
    assert Desired.model_validate(desired.model_dump(mode="json")) == desired
    assert Desired.model_validate(desired.model_dump(mode="json", by_alias=True)) == desired
    assert Desired.model_validate_json(desired.model_dump_json()) == desired
