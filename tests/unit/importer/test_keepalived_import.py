"""`shoal import --keepalived-conf` and `shoal export`: fixtures written from keepalived.conf(5),
imported into repositories that validate and exported back to equivalent files; every construct
shoal cannot carry is named with its line, and nothing is written unless the operator allows it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.desired.loader import load_repository
from reconciler.importer.keepalived_read import DirectorConf, read_director_conf
from reconciler.importer.keepalived_syntax import parse_keepalived_conf
from reconciler.importer.sites import ImportSourceInvalid

ROOT = Path(__file__).resolve().parents[3]
CASES = ROOT / "fixtures" / "import" / "keepalived"
REPO = ROOT / "fixtures" / "config-repo"
runner = CliRunner()
NAMES = sorted(p.name for p in CASES.iterdir() if p.is_dir())


def _directors(case: Path) -> list[str]:
    return [d for d in ("lvs1", "lvs2") if (case / f"{d}.conf").is_file()]


def import_case(case: Path, target: Path, *extra: str) -> tuple[int, str]:
    args = ["import", str(target), "--known-hosts", str(REPO / "known_hosts"),
            "--inventory", str(REPO / "inventory.toml")]  # fmt: skip
    for d in _directors(case):
        args += ["--keepalived-conf", f"{d}={case / f'{d}.conf'}"]
    result = runner.invoke(app, [*args, *extra])
    return result.exit_code, result.output


def semantics(conf: DirectorConf) -> dict[str, object]:
    """What a director's keepalived.conf does, without where or how it is spelled."""
    return {
        "services": {
            (s.vip, s.port, s.protocol): (
                s.scheduler, s.persistence, s.check,
                sorted((r.address, r.weight) for r in s.real_servers),
            )
            for s in conf.services
        },
        "vrrp": sorted(
            (i.virtual_router_id, i.priority, i.advert_interval, i.state, i.interface,
             sorted(v for v, _ in i.vips))
            for i in conf.instances
        ),
    }  # fmt: skip


def read(path: Path) -> DirectorConf:
    return read_director_conf(parse_keepalived_conf(path), str(path))


def test_there_are_five_cases_at_least() -> None:
    assert len(NAMES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_import_then_export_gives_an_equivalent_file(name: str, tmp_path: Path) -> None:
    case = CASES / name
    code, output = import_case(case, tmp_path / "repo")
    assert code == 0, output
    assert "not imported" not in output
    desired = load_repository(tmp_path / "repo")
    for director in _directors(case):
        original = read(case / f"{director}.conf")
        assert original.dropped == [], original.dropped
        out = tmp_path / f"{director}.conf"
        exported = runner.invoke(app, ["export", str(tmp_path / "repo"), "--director", director,
                                       "--out", str(out)])  # fmt: skip
        assert exported.exit_code == 0, exported.output
        again = read(out)
        assert again.dropped == [], again.dropped
        assert semantics(again) == semantics(original)
        assert semantics(original)["services"], "every case has virtual servers"
    assert desired.clusters


def test_the_imported_repository_says_where_each_object_came_from(tmp_path: Path) -> None:
    code, output = import_case(CASES / "persistence-udp", tmp_path / "repo")
    assert code == 0, output
    text = (tmp_path / "repo" / "clusters" / "web.toml").read_text()
    conf = CASES / "persistence-udp" / "lvs1.conf"
    assert f"[[service]]  # {conf}:18" in text
    desired = load_repository(tmp_path / "repo")
    (https, dns) = desired.clusters["web"].services
    assert (https.port, https.persistence, https.check.type, https.check.timeout) == (443, 300,
                                                                                     "tcp", 4)
    assert (dns.protocol, dns.scheduler, [(r.host, r.weight) for r in dns.real_servers]) == (
        "udp", "rr", [("web2", 3), ("web3", 1)])  # fmt: skip
    vrrp = desired.clusters["web"].cluster.vrrp
    assert (vrrp.virtual_router_id, vrrp.priority_primary, vrrp.priority_backup,
            vrrp.advert_interval) == (60, 200, 120, 2)  # fmt: skip
    assert desired.clusters["web"].cluster.directors == ("lvs1", "lvs2")


UNSUPPORTED = """\
vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 150
    authentication {
        auth_type PASS
    }
    virtual_ipaddress {
        10.77.0.100/32 dev eth0
    }
}
virtual_server 10.77.0.100 80 {
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server 10.77.0.21 80 {
        weight 1
        MISC_CHECK {
            misc_path /usr/local/bin/check
        }
    }
    real_server 10.77.0.22 80 {
        weight 1
    }
}
virtual_server 10.77.0.100 8080 {
    lb_algo rr
    lb_kind NAT
    real_server 10.77.0.21 8080 {
        weight 1
    }
}
virtual_server fwmark 7 {
    lb_kind DR
}
"""


def test_what_shoal_cannot_carry_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(UNSUPPORTED)
    base = ["import", "--known-hosts", str(REPO / "known_hosts"), "--inventory",
            str(REPO / "inventory.toml"), "--keepalived-conf", f"lvs1={conf}"]  # fmt: skip
    refused = runner.invoke(app, [*base[:1], str(tmp_path / "repo"), *base[1:]])
    assert refused.exit_code == 1, refused.output
    lines = refused.output.splitlines()
    assert f"{conf}:6: authentication: not modelled in shoal's VRRP settings (router id, " \
        "priorities, advert interval)" in lines
    assert f"{conf}:19: MISC_CHECK: MISC_CHECK is not a check shoal runs yet (tcp, http)" in lines
    nat = f"{conf}:27: virtual_server 10.77.0.100 8080: lb_kind NAT"
    assert any(ln.startswith(nat) for ln in lines)
    assert any(ln.startswith(f"{conf}:34: virtual_server fwmark 7: virtual_server fwmark is not")
               for ln in lines)  # fmt: skip
    assert lines[-1].startswith("shoal import: nothing written")
    assert not (tmp_path / "repo").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["keepalived.conf"], "no staging left behind"

    partial = runner.invoke(app, [*base[:1], str(tmp_path / "repo"), *base[1:], "--allow-partial"])
    assert partial.exit_code == 0, partial.output
    assert f"not imported: {conf}:19: MISC_CHECK" in partial.output
    text = (tmp_path / "repo" / "clusters" / "vi_1.toml").read_text()
    assert f"#   {conf}:27: virtual_server 10.77.0.100 8080: lb_kind NAT" in text
    desired = load_repository(tmp_path / "repo")
    (svc,) = desired.clusters["vi_1"].services
    assert svc.port == 80 and [r.host for r in svc.real_servers] == ["web1", "web2"]


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        ("vrrp_instance VI_1 {\n  state MASTER\n", 2, 9, "a block opened with '{' is never closed"),
        ("}\n", 1, 1, "'}' closes no block"),
        ("@lvs1 vrrp_instance VI_1 {\n}\n", 1, 1, "keepalived conditional line '@lvs1'"),
        ("$IFACE=eth0\n", 1, 1, "keepalived parameter '$IFACE=eth0'"),
        ("include nothing-here/*.conf\n", 1, 9, "include 'nothing-here/*.conf' matches no file"),
    ],
)
def test_syntax_errors_name_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: int, message: str
) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    with pytest.raises(ImportSourceInvalid) as info:
        parse_keepalived_conf(conf)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.column) == (str(conf), line, column)
    assert message in issue.message


def test_directors_that_disagree_are_an_error_naming_both_places(tmp_path: Path) -> None:
    case = CASES / "http-pair"
    backup = tmp_path / "lvs2.conf"
    backup.write_text((case / "lvs2.conf").read_text().replace("weight 2", "weight 3"))
    args = ["import", str(tmp_path / "repo"), "--known-hosts", str(REPO / "known_hosts"),
            "--inventory", str(REPO / "inventory.toml"),
            "--keepalived-conf", f"lvs1={case / 'lvs1.conf'}", "--keepalived-conf",
            f"lvs2={backup}"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"{backup}:17: virtual_server 10.77.0.100 80 differs from {case / 'lvs1.conf'}:17" \
        in result.output
    assert not (tmp_path / "repo").exists()


def test_a_director_of_unknown_address_is_an_error(tmp_path: Path) -> None:
    case = CASES / "includes"
    result = runner.invoke(app, ["import", str(tmp_path / "repo"), "--known-hosts",
                                 str(REPO / "known_hosts"), "--keepalived-conf",
                                 str(case / "lvs1.conf")])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "the primary director (primary): its address is unknown" in result.output


def test_an_instance_named_as_shoal_names_it_keeps_its_name() -> None:
    """`VI_web` -> cluster `web` (rendered back as `VI_web`: keepalived would take a renamed
    instance for a new one); any other name is made a valid shoal name."""
    from reconciler.importer.keepalived_site import cluster_name

    assert cluster_name("VI_web") == "web"
    assert (cluster_name("VI_1"), cluster_name("web"), cluster_name("VI_Web")) == (
        "vi_1", "web", "vi_web")
