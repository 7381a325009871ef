"""What a run's page shows beyond GET /runs/{id}: progress against the plan, and the
verification's traffic per real server as bars against the share its weight asks for.

The chart is drawn on the server as SVG geometry (presentation attributes, no inline style, so
the page's CSP holds and it reads without JavaScript): one bar per real server, its length the
requests it received, and a tick where its weight says it should be.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.schemas import ArpCheckOut, ServiceTrafficOut
from reconciler.desired.endpoint import service_endpoint

BAR_AREA = 300.0  # SVG units of the longest bar
ROW = 34
LABEL = 110


@dataclass(frozen=True, slots=True)
class Bar:
    host: str
    weight: int
    received: int | None
    expected: float  # requests its weight asks for
    y: int
    width: float
    tick: float  # x of the expected share
    text_y: int


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    director: str | None
    ok: int
    requests: int
    bars: list[Bar]
    height: int
    label_x: int = LABEL


def chart(service: ServiceTrafficOut) -> Chart:
    got = [rs.received if rs.received is not None else rs.answered for rs in service.real_servers]
    total = sum(got)
    weights = sum(rs.weight for rs in service.real_servers) or 1
    expected = [total * rs.weight / weights for rs in service.real_servers]
    scale = BAR_AREA / max([*got, *expected, 1])
    bars = [
        Bar(
            host=rs.host,
            weight=rs.weight,
            received=rs.received if rs.received is not None else rs.answered,
            expected=round(exp, 1),
            y=i * ROW + 6,
            width=round(n * scale, 1),
            tick=round(LABEL + exp * scale, 1),
            text_y=i * ROW + 22,
        )
        for i, (rs, n, exp) in enumerate(zip(service.real_servers, got, expected, strict=True))
    ]
    return Chart(
        title=f"{service.cluster}/{service.service} "
        f"{service_endpoint(service.vip, service.port, service.protocol)} from {service.client}",
        director=service.director,
        ok=service.ok,
        requests=service.requests,
        bars=bars,
        height=max(1, len(bars)) * ROW + 8,
    )


def arp_owner(check: ArpCheckOut) -> str:
    """Who answered ARP for the VIP, in words."""
    if not check.responders:
        return "nobody answered"
    names = [host or f"unknown MAC {mac}" for mac, host in check.responders.items()]
    return ", ".join(names)


def arp_ok(check: ArpCheckOut) -> bool:
    return check.director is not None and list(check.responders.values()) == [check.director]
