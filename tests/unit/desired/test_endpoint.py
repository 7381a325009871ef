"""An address and a port read the same way in every message: IPv6 in brackets."""

from __future__ import annotations

from reconciler.cli.verify import render
from reconciler.desired.endpoint import endpoint, service_endpoint
from reconciler.verify.result import RealServerTraffic, ServiceTraffic, VerificationResult


def test_an_ipv6_address_is_bracketed_and_an_ipv4_one_is_not() -> None:
    assert endpoint("10.77.0.100", 80) == "10.77.0.100:80"
    assert endpoint("fd77:77:77:1::100", 80) == "[fd77:77:77:1::100]:80"
    assert endpoint("::1", "8080") == "[::1]:8080"
    assert service_endpoint("fd77::100", 443, "tcp") == "[fd77::100]:443/tcp"
    assert service_endpoint("10.77.0.100", 53, "udp") == "10.77.0.100:53/udp"


def _traffic(vip: str) -> ServiceTraffic:
    return ServiceTraffic(
        cluster="web", service="http6", vip=vip, port=80, protocol="tcp", client="client1",
        director="lvs1", requests=10, ok=10, failed=0, rounds=1,
        real_servers=(RealServerTraffic(host="web1", weight=1, received=10, answered=10,
                                        via_director=0),),
        forward_packets=30, return_packets=0,
    )  # fmt: skip


def test_the_verify_command_and_the_run_record_bracket_an_ipv6_vip() -> None:
    result = VerificationResult(ok=True, clients=("client1",), services=(_traffic("fd77::100"),))
    assert render(result)[0].startswith("web/http6 [fd77::100]:80/tcp from client1 (via lvs1)")
    assert list(result.distribution()) == ["[fd77::100]:80/tcp (client1)"]
