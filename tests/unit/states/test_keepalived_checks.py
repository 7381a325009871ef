"""Every health check type rendered for keepalived, and Debian 12's `keepalived -t` takes it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from states.keepalived import validate_argv
from states.keepalived_conf import render_keepalived_conf
from tests.unit.states.director_fixtures import desired
from tests.unit.states.test_director_keepalived import _keepalived

CHECKS: dict[str, tuple[int, str, dict[str, Any], list[str]]] = {
    "http-regex": (80, "tcp", {"type": "http", "path": "/status", "expect": 200,
                               "body_regex": "^ok [a-z]+\\d"},
                   ["HTTP_GET {", "path /status", "status_code 200", 'regex "^ok [a-z]+\\d"']),
    "http-digest": (81, "tcp", {"type": "http", "digest": "9a0364b9e99bb480dd25e1f0284c8555"},
                    ["HTTP_GET {", "digest 9a0364b9e99bb480dd25e1f0284c8555"]),
    "https-sni": (443, "tcp", {"type": "https", "sni": "www.example.org", "expect": 204,
                               "body_regex": "up"},
                  ["SSL_GET {", "status_code 204", "virtualhost www.example.org", "enable_sni",
                   'regex "up"']),
    "dns": (53, "udp", {"type": "dns", "query_name": "www.example.org", "query_type": "AAAA"},
            ["DNS_CHECK {", "type AAAA", "name www.example.org", "connect_port 53"]),
    "udp": (9000, "udp", {"type": "udp", "send": "70696e67", "receive": "706f6e67"},
            ["UDP_CHECK {", "payload 70696e67", "require_reply 706f6e67"]),
    "udp-no-reply": (9001, "udp", {"type": "udp", "send": "00"}, ["payload 00"]),
}  # fmt: skip


def _conf() -> str:
    services = [
        {"name": name, "vip": "10.77.0.100", "port": port, "protocol": proto, "check": check,
         "real_server": [{"host": "web1"}, {"host": "web2"}]}
        for name, (port, proto, check, _) in CHECKS.items()
    ]  # fmt: skip
    return render_keepalived_conf(desired("keepalived", services), "lvs1")


def _block(text: str, port: int) -> str:
    start = text.index(f"virtual_server 10.77.0.100 {port} {{")
    return text[start : text.index("\n}\n", start)]


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_each_check_is_rendered(name: str) -> None:
    port, _, _, lines = CHECKS[name]
    block = _block(_conf(), port)
    for line in lines:
        assert f" {line}\n" in block + "\n", (line, block)
    if name == "udp-no-reply":
        assert "require_reply" not in block


def test_keepalived_accepts_every_check(tmp_path: Path) -> None:
    _keepalived()
    content = _conf()
    conf = tmp_path / "keepalived.conf"
    conf.write_text(content)
    res = subprocess.run(validate_argv(str(conf), content), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # The same test refuses a keyword it does not know, so the pass above means something.
    bad = content.replace("enable_sni", "enable_snii")
    conf.write_text(bad)
    res = subprocess.run(validate_argv(str(conf), bad), capture_output=True, text=True)
    assert res.returncode != 0, res.stderr
