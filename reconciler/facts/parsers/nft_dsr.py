"""shoal's own DSR table (`netdev shoal_dsr`): its value types, and decoding it from `nft -j`.

The value types (`Bucket`, `DsrService`, `DsrTable`) are the table as shoal writes it
(`states.nft_dsr_render`) and as `decode_table` reads it back from `nft -j list table netdev
shoal_dsr` (the facts' canonical JSON); the director's state compares the two. Chain, map and set
names derive from protocol, VIP and port only. A table that is not in the shape shoal writes
(hand edits, another interface, an older shape of shoal's own) raises `Unreadable`.

A service is IPv4 or IPv6 (its VIP's family): an IPv6 service matches `ip6 daddr` and hashes on
`ip6 saddr`; its names replace the VIP's colons, as an IPv4 VIP's dots, with `_` (the compressed
IPv6 text has either `::` or eight groups, so no two VIPs of either family share a name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from reconciler.desired.models import address_order, family_of

INGRESS_CHAIN = "ingress"


@dataclass(frozen=True, slots=True)
class Bucket:
    low: int
    high: int
    mac: str


@dataclass(frozen=True, slots=True)
class DsrService:
    """One virtual service in the table; names are derived from proto/VIP/port only."""

    protocol: str  # "tcp" | "udp"
    vip: str
    port: int
    client_affinity: bool  # hash on the client address only (persistence > 0)
    buckets: tuple[Bucket, ...]  # empty: every real server drained

    @property
    def family(self) -> int:
        return family_of(self.vip)

    @property
    def ip(self) -> str:
        """nft's name of the service's network header: `ip` or `ip6`."""
        return "ip6" if self.family == 6 else "ip"

    @property
    def key(self) -> str:
        vip = self.vip.replace(".", "_").replace(":", "_")
        return f"{self.protocol}_{vip}_{self.port}"

    @property
    def chain(self) -> str:
        return f"svc_{self.key}"

    @property
    def flow_map(self) -> str:
        return f"flows_{self.key}"

    @property
    def closing_set(self) -> str:
        return f"ends_{self.key}"

    @property
    def tracks_closing(self) -> bool:
        # Only TCP says when a flow ends; a UDP flow lives until its idle timeout.
        return self.protocol == "tcp"

    @property
    def modulus(self) -> int:
        return self.buckets[-1].high + 1 if self.buckets else 0


@dataclass(frozen=True, slots=True)
class DsrTable:
    interface: str
    director_mac: str
    services: tuple[DsrService, ...]


class Unreadable(Exception):
    """The table is not in the shape shoal writes."""


def _objects(canonical_json: str) -> list[dict[str, Any]]:
    data = json.loads(canonical_json)
    if isinstance(data, dict):
        data = data.get("nftables", [])
    if not isinstance(data, list):
        raise Unreadable("not a list of nft objects")
    return [o for o in data if isinstance(o, dict)]


def _payload(expr: Any) -> tuple[str, str] | None:
    if isinstance(expr, dict) and "payload" in expr:
        p = expr["payload"]
        return (str(p.get("protocol")), str(p.get("field")))
    return None


def _concat_fields(expr: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(expr, dict) and "concat" in expr:
        items = [_payload(e) for e in expr["concat"]]
    else:
        items = [_payload(expr)]
    if any(i is None for i in items):
        raise Unreadable("unexpected hash key")
    return tuple(i for i in items if i is not None)


def _decode_buckets(data: Any) -> tuple[Bucket, ...]:
    elems = data.get("set") if isinstance(data, dict) else None
    if not isinstance(elems, list):
        raise Unreadable("bucket map is not an anonymous map")
    out = []
    for key, mac in elems:
        if isinstance(key, dict) and "range" in key:
            lo, hi = int(key["range"][0]), int(key["range"][1])
        else:
            lo = hi = int(key)
        out.append(Bucket(lo, hi, str(mac).lower()))
    return tuple(sorted(out, key=lambda b: b.low))


def _decode_service_chain(
    rules: list[list[Any]], interface: str, protocol: str
) -> tuple[str | None, bool, tuple[Bucket, ...], int, str | None]:
    """(director mac, client affinity, buckets, modulus, hashed header) of a service chain.

    The hashed header is `ip` or `ip6` (None for a chain that drops: no hash).
    """
    # The flow lookups (closing, closing starts, established; UDP: established), then the hash.
    lookups = 3 if protocol == "tcp" else 1
    if len(rules) != lookups + 1:
        raise Unreadable(f"a {protocol} service chain has {lookups + 1} rules")
    *first, second = rules
    for rule in first:
        if not any(isinstance(e, dict) and "@flows_" in str(e) for e in rule):
            raise Unreadable("flow lookup rule missing")
    if protocol == "tcp" and not all("@ends_" in str(rule) for rule in first[:2]):
        raise Unreadable("closing flow rules missing")
    if second == [{"drop": None}]:
        return None, False, (), 0, None
    mac: str | None = None
    affinity = False
    buckets: tuple[Bucket, ...] = ()
    modulus = -1
    hashed: str | None = None
    fwd_ok = False
    for e in second:
        if not isinstance(e, dict):
            continue
        if "mangle" in e:
            field = _payload(e["mangle"]["key"])
            value = e["mangle"]["value"]
            if field == ("ether", "saddr") and isinstance(value, str):
                mac = value.lower()
            elif field == ("ether", "daddr") and isinstance(value, dict) and "map" in value:
                jh = value["map"]["key"].get("jhash")
                if not isinstance(jh, dict):
                    raise Unreadable("bucket map not keyed by jhash")
                modulus = int(jh["mod"])
                fields = _concat_fields(jh["expr"])
                affinity = len(fields) == 1
                hashed = fields[0][0]
                buckets = _decode_buckets(value["map"]["data"])
        elif "fwd" in e:
            fwd_ok = e["fwd"].get("dev") == interface
    if mac is None or modulus < 0 or not fwd_ok:
        raise Unreadable("service rule not in shoal's shape")
    return mac, affinity, buckets, modulus, hashed


def decode_table(canonical_json: str, interface: str) -> DsrTable:
    """The model back from `nft -j list table netdev shoal_dsr`; raises `Unreadable`.

    JSON of another shape altogether raises ValueError, KeyError, TypeError or IndexError.
    """
    objs = _objects(canonical_json)
    rules: dict[str, list[list[Any]]] = {}
    chains: set[str] = set()
    for o in objs:
        if "rule" in o:
            r = o["rule"]
            rules.setdefault(str(r.get("chain")), []).append(list(r.get("expr", [])))
        elif "chain" in o:
            chains.add(str(o["chain"].get("name")))
    if INGRESS_CHAIN not in chains:
        raise Unreadable("no ingress chain")
    services = []
    director_macs: set[str] = set()
    for expr in rules.get(INGRESS_CHAIN, []):
        vip: str | None = None
        vip_header = ""
        proto: str | None = None
        port: int | None = None
        target: str | None = None
        for e in expr:
            if isinstance(e, dict) and "match" in e:
                field = _payload(e["match"]["left"])
                if field in (("ip", "daddr"), ("ip6", "daddr")):
                    vip = str(e["match"]["right"])
                    vip_header = field[0]
                elif field is not None and field[1] == "dport":
                    proto, port = field[0], int(e["match"]["right"])
            elif isinstance(e, dict) and "goto" in e:
                target = str(e["goto"]["target"])
        if vip is None or proto is None or port is None or target is None:
            raise Unreadable("dispatch rule not in shoal's shape")
        mac, affinity, buckets, modulus, hashed = _decode_service_chain(
            rules.get(target, []), interface, proto
        )
        svc = DsrService(proto, vip, port, affinity, buckets)
        if target != svc.chain or modulus != svc.modulus:
            raise Unreadable("service chain name or modulus differs")
        if vip_header != svc.ip or (hashed is not None and hashed != svc.ip):
            raise Unreadable("service matches or hashes another address family than its VIP's")
        if mac is not None:
            director_macs.add(mac)
        services.append(svc)
    if len(director_macs) > 1:
        raise Unreadable("more than one director MAC")
    extra = chains - {INGRESS_CHAIN} - {s.chain for s in services}
    if extra:
        raise Unreadable(f"unexpected chains {sorted(extra)}")
    services.sort(key=lambda x: (x.protocol, address_order(x.vip), x.port))
    mac = director_macs.pop() if director_macs else ""
    return DsrTable(interface, mac, tuple(services))


def fwd_interface(canonical_json: str) -> str | None:
    """The interface the table's first `fwd` sends to, or None if it has none."""
    for o in _objects(canonical_json):
        for e in o.get("rule", {}).get("expr", []):
            if isinstance(e, dict) and "fwd" in e:
                return str(e["fwd"].get("dev"))
    return None
