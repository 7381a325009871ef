"""The `nft -f` text of shoal's DSR table: the whole definition, a replace, an update.

Rendering is deterministic. The digest of the definition (without digests) goes into the comment
of every dispatch rule, since nft 1.0.6 leaves the table comment out of its JSON. An update keeps
the flow maps of the services that stay: it adds what is missing, flushes and refills the chains
(map elements survive a chain flush) and deletes the chains, maps and sets of services that left.

IPv6 services differ in their keys only. The dispatch rule matches `ip6 daddr`, the hash takes
`ip6 saddr` (with the source port unless the service is persistent), but the flow map and the
closing set are keyed by the low 96 bits of the source address (`@nh,96,96`) and the port:
nft 1.0.6 (Debian 12) aborts (netlink_linearize.c:799, `dreg < ctx->reg_low`) on a map
`update` whose key is longer than 16 bytes, and `ipv6_addr . inet_service` is 20. Two clients
whose addresses differ only in their first 32 bits and that use the same source port then share
one pin: the later flow follows the earlier one's real server while the pin lives.
"""

from __future__ import annotations

import hashlib

from reconciler.facts.parsers.nft_dsr import INGRESS_CHAIN, DsrService, DsrTable
from states.nft_dsr_model import FAMILY, TABLE

INGRESS_PRIORITY = 0
FLOW_TIMEOUT = 300  # seconds of idle time before a flow may be re-hashed
# Seconds a flow lives after the client's FIN/RST: its last ACKs and retransmissions, not more.
CLOSING_TIMEOUT = 5
FLOW_MAP_SIZE = 65536
DIGEST_PREFIX = "shoal-dsr "


def digest(t: DsrTable) -> str:
    """What the dispatch rules' comments carry: the definition's digest."""
    return hashlib.sha256(render_table(t, with_digest=False).encode()).hexdigest()[:16]


# The last 12 bytes of the IPv6 source address (header offset 8, 16 bytes long), in bits.
_V6_FLOW_SOURCE = "@nh,96,96"


def _flow_key(svc: DsrService) -> str:
    source = _V6_FLOW_SOURCE if svc.family == 6 else "ip saddr"
    return f"{source} . {svc.protocol} sport"


def _hash_expr(svc: DsrService) -> str:
    source = f"{svc.ip} saddr"
    return source if svc.client_affinity else f"{source} . {svc.protocol} sport"


def _key_type(svc: DsrService) -> str:
    """The flow key's declaration: a raw payload has no named type, so IPv6 uses `typeof`."""
    if svc.family == 6:
        return f"typeof {_flow_key(svc)}"
    return "type ipv4_addr . inet_service"


def _bucket_map(svc: DsrService) -> str:
    parts = []
    for b in svc.buckets:
        key = str(b.low) if b.low == b.high else f"{b.low}-{b.high}"
        parts.append(f"{key} : {b.mac}")
    return "{ " + ", ".join(parts) + " }"


def _map_decl(svc: DsrService) -> str:
    value = "ether daddr" if svc.family == 6 else "ether_addr"
    return f"{_key_type(svc)} : {value}; size {FLOW_MAP_SIZE}; timeout {FLOW_TIMEOUT}s;"


def _closing_decl(svc: DsrService) -> str:
    # `dynamic` spelled out: nft adds it for a set the rules update, and `add set` must match the
    # existing declaration exactly to be a no-op in an update transaction.
    return (
        f"{_key_type(svc)}; size {FLOW_MAP_SIZE}; flags dynamic,timeout; "
        f"timeout {CLOSING_TIMEOUT}s;"
    )


def _ingress_decl(t: DsrTable) -> str:
    return (
        f'type filter hook ingress device "{t.interface}" priority {INGRESS_PRIORITY}; '
        "policy accept;"
    )


def _dispatch_rule(t: DsrTable, svc: DsrService, digest: str | None) -> str:
    rule = f"{svc.ip} daddr {svc.vip} {svc.protocol} dport {svc.port} goto {svc.chain}"
    if digest is not None:
        rule += f' comment "{DIGEST_PREFIX}{digest}"'
    return rule


def _service_rules(t: DsrTable, svc: DsrService) -> list[str]:
    key = _flow_key(svc)
    update = f"update @{svc.flow_map} {{ {key} : ether daddr }}"
    fwd = f'fwd to "{t.interface}"'
    lookup = f"ether daddr set {key} map @{svc.flow_map}"
    rules = []
    if svc.tracks_closing:
        short = f"update @{svc.flow_map} {{ {key} timeout {CLOSING_TIMEOUT}s : ether daddr }}"
        rules += [
            # A closing flow stays on its real server, and stays short-lived.
            f"{key} @{svc.closing_set} {lookup} {short} update @{svc.closing_set} {{ {key} }} "
            f"ether saddr set {t.director_mac} {fwd}",
            f"tcp flags & (fin | rst) != 0 {lookup} {short} add @{svc.closing_set} {{ {key} }} "
            f"ether saddr set {t.director_mac} {fwd}",
        ]
    # An established flow keeps its real server, whatever the buckets say now.
    rules.append(f"{lookup} {update} ether saddr set {t.director_mac} {fwd}")
    if svc.buckets:
        rules.append(bucket_rule(t, svc, str(svc.modulus), _bucket_map(svc)))
    else:
        # Every real server drained: refuse new flows rather than let the director's own stack
        # answer for the VIP with resets.
        rules.append("drop")
    return rules


def bucket_rule(t: DsrTable, svc: DsrService, modulus: str, bucket_map: str) -> str:
    """A service chain's last rule: new flows hashed into the buckets. shoal-healthd rewrites
    it with sentinels in place of `modulus` and `bucket_map` (reconciler.plan.compile_health)."""
    key = _flow_key(svc)
    return (
        f"ether saddr set {t.director_mac} ether daddr set jhash {_hash_expr(svc)} "
        f"mod {modulus} map {bucket_map} update @{svc.flow_map} {{ {key} : ether daddr }} "
        f'fwd to "{t.interface}"'
    )


def render_table(t: DsrTable, *, with_digest: bool = True) -> str:
    """The whole table as `nft -f` input (a definition, not a transaction); deterministic."""
    text_digest = digest(t) if with_digest else None
    lines = [f"table {FAMILY} {TABLE} {{"]
    for svc in t.services:
        lines.append(f"\tmap {svc.flow_map} {{ {_map_decl(svc)} }}")
        if svc.tracks_closing:
            lines.append(f"\tset {svc.closing_set} {{ {_closing_decl(svc)} }}")
    lines.append(f"\tchain {INGRESS_CHAIN} {{")
    lines.append(f"\t\t{_ingress_decl(t)}")
    for svc in t.services:
        lines.append(f"\t\t{_dispatch_rule(t, svc, text_digest)}")
    lines.append("\t}")
    for svc in t.services:
        lines.append(f"\tchain {svc.chain} {{")
        lines.extend(f"\t\t{r}" for r in _service_rules(t, svc))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_replace(t: DsrTable) -> str:
    """One transaction that replaces the table whether or not it exists (loses flow maps)."""
    return f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n" + render_table(t)


def render_update(t: DsrTable, current: DsrTable) -> str:
    """One transaction from `current` to `t` that keeps the flow maps of surviving services."""
    p = f"{FAMILY} {TABLE}"
    rule_digest = digest(t)
    out = [f"add table {p}", f"add chain {p} {INGRESS_CHAIN} {{ {_ingress_decl(t)} }}"]
    for svc in t.services:
        out.append(f"add map {p} {svc.flow_map} {{ {_map_decl(svc)} }}")
        if svc.tracks_closing:
            out.append(f"add set {p} {svc.closing_set} {{ {_closing_decl(svc)} }}")
        out.append(f"add chain {p} {svc.chain}")
    out.append(f"flush chain {p} {INGRESS_CHAIN}")
    for svc in t.services:
        out.append(f"flush chain {p} {svc.chain}")
    for svc in t.services:
        out.append(f"add rule {p} {INGRESS_CHAIN} {_dispatch_rule(t, svc, rule_digest)}")
    for svc in t.services:
        out.extend(f"add rule {p} {svc.chain} {r}" for r in _service_rules(t, svc))
    wanted = {s.chain for s in t.services}
    for old in current.services:
        if old.chain not in wanted:
            # The dispatch rule that jumped here was flushed above, in the same transaction.
            out.append(f"flush chain {p} {old.chain}")
            out.append(f"delete chain {p} {old.chain}")
            out.append(f"delete map {p} {old.flow_map}")
            if old.tracks_closing:
                out.append(f"delete set {p} {old.closing_set}")
    return "\n".join(out) + "\n"
