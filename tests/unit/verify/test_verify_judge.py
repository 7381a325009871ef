"""The verification's judgement on what was seen: which director is active, what a service's
traffic says about its hosts, who answers ARP; each failure must name the host at fault."""

from __future__ import annotations

from reconciler.desired.models import ClusterHeader
from reconciler.facts.hostfacts import Address, Fact, Interface
from reconciler.verify.judge import Inspection, active_director, judge_arp, judge_traffic
from reconciler.verify.result import (
    ArpCheck,
    ArpResponder,
    RealServerTraffic,
    ServiceTraffic,
    VerificationFailure,
)
from tests.statecases import fresh_facts

VIP = "10.77.0.100"
MACS = {"lvs1": "02:00:00:00:00:0b", "lvs2": "02:00:00:00:00:0c", "web1": "02:00:00:00:00:15"}
HEADER = ClusterHeader(name="web", directors=("lvs1", "lvs2"))


def _link(host: str, *addresses: str, name: str = "eth0") -> Interface:
    return Interface(
        name=name,
        mac=MACS[host].upper(),
        up=True,
        addresses=tuple(Address(address=a, prefix=24) for a in addresses),
    )


def _seen(**links: tuple[Interface, ...]) -> Inspection:
    return Inspection(links, {h: "eth0" for h in MACS}, {})


def _where(failures: list[VerificationFailure]) -> list[tuple[str, str | None]]:
    return [(f.check, f.host) for f in failures]


# --- the active director ----------------------------------------------------------------------


def test_the_one_director_holding_the_vip_on_its_interface_is_active() -> None:
    seen = _seen(lvs1=(_link("lvs1", "10.77.0.11"),), lvs2=(_link("lvs2", "10.77.0.12", VIP),))
    assert active_director("web", HEADER, VIP, seen) == ("lvs2", [])
    # On another interface (lo, as a real server holds it) the VIP does not make a director.
    on_lo = _seen(lvs1=(_link("lvs1", VIP, name="lo"),), lvs2=(_link("lvs2"),))
    director, failures = active_director("web", HEADER, VIP, on_lo)
    assert director is None and _where(failures) == [("director", "lvs1")]


def test_two_holders_blame_the_backup_and_no_holder_blames_the_primary() -> None:
    both = _seen(lvs1=(_link("lvs1", VIP),), lvs2=(_link("lvs2", VIP),))
    director, failures = active_director("web", HEADER, VIP, both)
    assert director is None and _where(failures) == [("director", "lvs2")]
    assert failures[0].message == f"lvs1 and lvs2 both hold {VIP}: only the active director may"
    none = _seen(lvs1=(_link("lvs1"),), lvs2=(_link("lvs2"),))
    director, failures = active_director("web", HEADER, VIP, none)
    assert director is None and _where(failures) == [("director", "lvs1")]
    assert failures[0].message == f"no director of cluster web holds {VIP} (checked lvs1, lvs2)"


def test_no_holder_is_not_judged_while_a_director_could_not_be_inspected() -> None:
    assert active_director("web", HEADER, VIP, _seen(lvs1=(_link("lvs1"),))) == (None, [])


# --- MACs ---------------------------------------------------------------------------------------


def test_a_mac_is_owned_by_an_inspected_host_else_by_the_facts() -> None:
    web2 = fresh_facts("web2")
    (mac,) = [i.mac for i in web2.interfaces.value or () if i.name == "eth0"]
    assert mac is not None
    seen = Inspection({"lvs1": (_link("lvs1"),)}, {"lvs1": "eth0"}, {"web2": web2})
    assert seen.mac_owner(MACS["lvs1"]) == "lvs1"  # upper case on the link, lower in the probe
    assert seen.host_mac("lvs1") == MACS["lvs1"]
    assert seen.mac_owner(mac.lower()) == "web2"
    unknown = web2.model_copy(update={"interfaces": Fact.unknown("ip -j addr: not installed")})
    assert Inspection({}, {}, {"web2": unknown}).mac_owner(mac.lower()) is None


# --- traffic ------------------------------------------------------------------------------------


def _traffic(*servers: RealServerTraffic, **kw: object) -> ServiceTraffic:
    base: dict[str, object] = dict(
        cluster="web", service="http", vip=VIP, port=80, protocol="tcp", client="client1",
        director="lvs1", requests=60, ok=60, failed=0, rounds=1, real_servers=servers,
        forward_packets=360, return_packets=0,
    )  # fmt: skip
    return ServiceTraffic.model_validate(base | kw)


def _rs(
    host: str, weight: int, received: int | None, answered: int = 0, via: int = 0
) -> RealServerTraffic:
    return RealServerTraffic(
        host=host, weight=weight, received=received, answered=answered, via_director=via
    )


def test_traffic_that_went_the_direct_routing_way_passes() -> None:
    assert judge_traffic(_traffic(_rs("web1", 1, 20, 20), _rs("web2", 2, 40, 40))) == []


def test_a_weighted_server_without_requests_and_a_drained_one_with_them_are_named() -> None:
    failures = judge_traffic(_traffic(_rs("web1", 1, 0), _rs("web2", 0, 60), _rs("web3", 0, 0)))
    assert _where(failures) == [("traffic", "web1"), ("traffic", "web2")]
    assert failures[0].message == (
        f"web1 (weight 1) received none of 60 requests to http {VIP}:80/tcp from client1"
    )
    # Without a counter the replies' bodies count.
    assert _where(judge_traffic(_traffic(_rs("web1", 1, None, 0), _rs("web2", 1, None, 60)))) == [
        ("traffic", "web1")
    ]
    # With no request answered there is no "received none" to report: the failure says it.
    assert _where(judge_traffic(_traffic(_rs("web1", 1, 0), ok=0, failed=60))) == [
        ("traffic", None)
    ]


def test_a_message_about_an_ipv6_service_brackets_its_vip() -> None:
    failures = judge_traffic(_traffic(_rs("web1", 1, 0), _rs("web2", 1, 60), vip="fd77::100"))
    assert failures[0].message == (
        "web1 (weight 1) received none of 60 requests to http [fd77::100]:80/tcp from client1"
    )


def test_failed_requests_name_the_server_that_received_them_and_answered_none() -> None:
    failures = judge_traffic(
        _traffic(_rs("web1", 1, 30, 30), _rs("web2", 1, 30, 0), ok=30, failed=30,
                 errors={"timeout": 30})
    )  # fmt: skip
    assert _where(failures) == [("traffic", None), ("traffic", "web2")]
    assert failures[0].message == (
        f"client1: 30 of 60 requests to http {VIP}:80/tcp failed (timeout: 30)"
    )
    # No request answered at all: every server that received some answered none.
    dead = judge_traffic(_traffic(_rs("web1", 1, 30), _rs("web2", 1, 30), ok=0, failed=60))
    assert _where(dead) == [("traffic", None), ("traffic", "web1"), ("traffic", "web2")]
    # Replies without bodies naming a server (answered 0 everywhere, some ok): nobody is named.
    unnamed = judge_traffic(_traffic(_rs("web1", 1, 30), _rs("web2", 1, 30), ok=30, failed=30))
    assert _where(unnamed) == [("traffic", None)]


def test_replies_through_the_director_name_the_server_else_the_director() -> None:
    via = judge_traffic(_traffic(_rs("web1", 1, 30, 30, via=5), _rs("web2", 1, 30, 30),
                                 return_packets=5))  # fmt: skip
    assert _where(via) == [("traffic", "web1")]
    unnamed = judge_traffic(_traffic(_rs("web1", 1, 30, 30, via=5), return_packets=9))
    assert _where(unnamed) == [("traffic", "web1"), ("traffic", "lvs1")]
    # Requests that never passed the active director.
    bypass = judge_traffic(_traffic(_rs("web1", 1, 60, 60), forward_packets=0))
    assert _where(bypass) == [("traffic", None)]
    assert "did not pass through the active director lvs1" in bypass[0].message
    # Unknown counters (None) are no evidence either way.
    assert judge_traffic(_traffic(_rs("web1", 1, 60, 60), forward_packets=None,
                                  return_packets=None)) == []  # fmt: skip


# --- ARP ----------------------------------------------------------------------------------------


def _arp(*responders: tuple[str, str | None], neighbour: str | None = None) -> ArpCheck:
    return ArpCheck(
        client="client1",
        vip=VIP,
        director="lvs1",
        expected_mac=MACS["lvs1"],
        responders=tuple(ArpResponder(mac=m, host=h) for m, h in responders),
        neighbour_mac=neighbour,
        neighbour_host={v: k for k, v in MACS.items()}.get(neighbour or ""),
    )


def test_only_the_active_director_may_answer_arp() -> None:
    lvs1 = (MACS["lvs1"], "lvs1")
    assert judge_arp(_arp(lvs1, neighbour=MACS["lvs1"]), asked=True) == []
    failures = judge_arp(_arp(lvs1, (MACS["web1"], "web1"), ("02:ff:00:00:00:01", None)),
                         asked=True)  # fmt: skip
    assert _where(failures) == [("arp", "web1"), ("arp", None)]
    assert [f.message for f in failures] == [
        f"web1 answers ARP for {VIP}",
        f"an unknown host (02:ff:00:00:00:01) answers ARP for {VIP}",
    ]
    # The director answering from another of its MACs is still the director.
    assert judge_arp(_arp(lvs1, ("02:00:00:00:00:aa", "lvs1")), asked=True) == []


def test_no_arp_answer_is_a_down_vip_only_if_the_probe_ran() -> None:
    down = judge_arp(_arp(), asked=True)
    assert _where(down) == [("arp", "lvs1")]
    assert down[0].message == f"nobody answers ARP for {VIP} (asked from client1): VIP is down"
    assert judge_arp(_arp(), asked=False) == []


def test_a_neighbour_entry_elsewhere_names_its_host() -> None:
    failures = judge_arp(_arp((MACS["lvs1"], "lvs1"), neighbour=MACS["web1"]), asked=True)
    assert _where(failures) == [("neighbour", "web1")]
    assert failures[0].message == (
        f"client1's neighbour entry for {VIP} points at web1 ({MACS['web1']}), "
        "not at the active director lvs1"
    )


def test_neighbour_solicitations_for_an_ipv6_vip_are_judged_like_arp() -> None:
    vip6 = "fd77:77:77::100"
    check = _arp((MACS["lvs1"], "lvs1"), (MACS["web1"], "web1")).model_copy(
        update={"vip": vip6, "probe": "nd"}
    )
    failures = judge_arp(check, asked=True)
    assert _where(failures) == [("nd", "web1")]
    assert failures[0].message == f"web1 answers Neighbour Solicitations for {vip6}"
    down = judge_arp(_arp().model_copy(update={"vip": vip6, "probe": "nd"}), asked=True)
    assert [(f.check, f.host, f.message) for f in down] == [
        ("nd", "lvs1", f"nobody answers Neighbour Solicitations for {vip6} (asked from client1): "
         "VIP is down"),
    ]  # fmt: skip
