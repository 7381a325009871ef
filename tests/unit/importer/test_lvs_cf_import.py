"""`shoal import --lvs-cf`: Piranha's lvs.cf into a repository, every key read or named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.desired.loader import load_repository
from reconciler.importer.lvs_cf import parse_lvs_cf, site_from_lvs_cf
from reconciler.importer.sites import ImportSourceInvalid

ROOT = Path(__file__).resolve().parents[3]
CASES = ROOT / "fixtures" / "import" / "lvs-cf"
REPO = ROOT / "fixtures" / "config-repo"
runner = CliRunner()


def run(target: Path, source: Path, *extra: str) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["import", str(target), "--known-hosts", str(REPO / "known_hosts"),
                                 "--inventory", str(REPO / "inventory.toml"), "--lvs-cf",
                                 str(source), "--cluster-name", "web", *extra])  # fmt: skip
    return result.exit_code, result.output.splitlines()


def test_three_direct_services_import_into_a_valid_repository(tmp_path: Path) -> None:
    source = CASES / "direct.cf"
    code, lines = run(tmp_path / "repo", source)
    assert code == 0, lines
    desired = load_repository(tmp_path / "repo")
    web = desired.clusters["web"]
    # primary and backup by address, named from the operator's inventory
    assert web.cluster.directors == ("lvs1", "lvs2") and web.cluster.director == "keepalived"
    got = {(s.name, s.vip, s.port, s.protocol, s.scheduler, s.persistence, s.check.type,
            s.check.interval, tuple((r.host, r.weight) for r in s.real_servers))
           for s in web.services}  # fmt: skip
    assert got == {
        ("http", "10.77.0.100", 80, "tcp", "wlc", 0, "tcp", 6, (("web1", 1), ("web2", 2))),
        ("https", "10.77.0.100", 443, "tcp", "wrr", 300, "tcp", 6, (("web1", 3),)),
        ("dns", "10.77.0.101", 53, "udp", "rr", 0, "tcp", 6, (("web2", 1),)),
    }
    # What was read with a word, not silently: inactive objects, nanny's timeout, daemon keys.
    assert f"note: {source}:34: server web3 is not active: not imported" in lines
    assert f"note: {source}:67: virtual old is not active: not imported" in lines
    assert any(ln.startswith(f"note: {source}:22: timeout = 6") for ln in lines)
    assert f"note: {source}:8: heartbeat_port configures Piranha's own daemons; not needed" in lines
    assert not [ln for ln in lines if ln.startswith("not imported")]


def test_fwmark_sorry_server_and_banner_checks_are_refused_by_line(tmp_path: Path) -> None:
    source = CASES / "fwmark.cf"
    code, lines = run(tmp_path / "repo", source)
    assert code == 1, lines
    assert lines[:-1] == [
        f"{source}:16: virtual web-sticky: a fwmark service is not imported as one address and "
        "port",
        f"{source}:19: fwmark = 100: not supported by shoal yet",
        f"{source}:22: send_program = /usr/local/bin/check %h: not supported by shoal yet",
        f"{source}:23: expect = OK: not supported by shoal yet",
        f"{source}:34: sorry_server = 10.77.0.23: not supported by shoal yet",
    ]
    assert not (tmp_path / "repo").exists()
    code, lines = run(tmp_path / "repo", source, "--allow-partial")
    assert code == 0, lines
    (svc,) = load_repository(tmp_path / "repo").clusters["web"].services
    assert (svc.name, svc.port, [r.host for r in svc.real_servers]) == ("http", 8000, ["web2"])
    text = (tmp_path / "repo" / "clusters" / "web.toml").read_text()
    assert f"#   {source}:34: sorry_server = 10.77.0.23: not supported by shoal yet" in text


def test_nat_network_imports_no_service(tmp_path: Path) -> None:
    source = tmp_path / "lvs.cf"
    source.write_text((CASES / "direct.cf").read_text().replace("network = direct",
                                                                "network = nat"))  # fmt: skip
    code, lines = run(tmp_path / "repo", source)
    assert code == 1
    assert lines[0] == (f"{source}:11: network = nat: shoal manages Direct Routing only; no "
                        "virtual service of this file is imported")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("virtual a {\n  port = 80\n", 1, None, "virtual a is never closed"),
        ("primary 10.0.0.1\n", 1, 1, "expected `key = value`"),
        ("server a {\n}\n", 1, 1, "a server block belongs inside a virtual block"),
        ("virtual a {\n  virtual b {\n  }\n}\n", 2, 3, "a virtual block belongs at the top level"),
        ("  }\n", 1, 3, "'}' closes no block"),
    ],
)
def test_malformed_files_give_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: int | None, message: str
) -> None:
    source = tmp_path / "lvs.cf"
    source.write_text(text)
    with pytest.raises(ImportSourceInvalid) as info:
        parse_lvs_cf(source, str(source))
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.column) == (str(source), line, column)
    assert issue.message.startswith(message)


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (("primary = 10.77.0.11", "primary = lvs-one"), 3, "primary = 'lvs-one' is not an address"),
        (("scheduler = wlc", "scheduler = fastest"), 20,
         "scheduler = 'fastest' is not an IPVS scheduler"),
        (("protocol = udp", "protocol = sctp"), 59, "protocol = 'sctp': expected tcp or udp"),
        (("weight = 2", "weight = two"), 32, "weight = 'two': expected a whole number"),
        (("port = 443", "port = 0"), 43, "virtual https needs a port (1-65535)"),
    ],
)  # fmt: skip
def test_bad_values_name_their_line(
    tmp_path: Path, edit: tuple[str, str], line: int, message: str
) -> None:
    source = tmp_path / "lvs.cf"
    source.write_text((CASES / "direct.cf").read_text().replace(*edit))
    with pytest.raises(ImportSourceInvalid) as info:
        site_from_lvs_cf(parse_lvs_cf(source, str(source)), "web")
    assert [(i.line, i.message) for i in info.value.issues] == [(line, message)]
