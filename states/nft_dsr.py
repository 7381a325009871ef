"""The `nftables` director backend: shoal's own `netdev shoal_dsr` table (state `nft.dsr_table`).

Direct Routing without IPVS, the way nftlb's "dsr" mode does it: an ingress chain on the
director's interface matches `ip daddr VIP <proto> dport PORT`, rewrites `ether saddr` to the
director's MAC (or the bridge learns the client's MAC on the director's port) and `ether daddr`
to a real server's MAC, then `fwd`s the frame out of the same interface. The real server answers
the client directly.

Choosing the real server: a jhash of the flow (`ip saddr . <proto> sport`, or `ip saddr` alone for
a persistent service) modulo N, mapped to buckets; each real server gets a contiguous bucket range
proportional to its weight (divided by the weights' gcd), weight 0 gets none (drained).

Flow persistence (zero-loss changes): a stateless hash moves established flows when N or the
bucket layout changes. Every service therefore has a dynamic map `flows_*` keyed by
`ip saddr . sport` whose value is the chosen MAC, written by `update` on every packet (refreshing
its timeout). The first rules of the service chain look the flow up there; only a miss falls
through to the hash. A membership or weight change must keep that map, so the table is never
replaced for them: one `nft -f` transaction adds what is missing and flushes and refills only the
chains (map elements survive a chain flush; tested on nft 1.0.6). A full replace
(`add table; delete table; table {...}`) happens only when the table is new or cannot be read
back in shoal's shape (hand edits, other interface, an older shape of shoal's own).

Closing TCP flows (the director sees only the client's half, like IPVS in DR mode): a client FIN
or RST puts the flow into the set `ends_*` and shortens its `flows_*` element to
CLOSING_TIMEOUT; every later packet of that flow keeps both short. So a finished connection stops
pinning its real server seconds after it ends instead of FLOW_TIMEOUT later. (`delete` from a map
is refused by the kernel from the packet path, hence the set and the per-element timeout.)

Drain: a drained or removed real server keeps its flows through the map; the drain step waits
until no map element points at its MAC any more (or the drain timeout passes). With the closing
rules that is CLOSING_TIMEOUT after its last connection ended, not FLOW_TIMEOUT after it, and once
the drain is over no pin is left that a recycled client port could follow to a real server that
has gone.

Drift: the table comment cannot be changed in place and nft 1.0.6 leaves it out of JSON, so the
digest of the desired model goes into the comment of every dispatch rule; in-sync is decided by
decoding the table's JSON (facts) back into the model and comparing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Argv, Change, FileWrite, LowState, SkippedRemoval, Step
from states.base import PlanContext, StateResult

FUNCTION = "nft.dsr_table"
FAMILY = "netdev"
TABLE = "shoal_dsr"
INGRESS_CHAIN = "ingress"
INGRESS_PRIORITY = 0
FLOW_TIMEOUT = 300  # seconds of idle time before a flow may be re-hashed
# Seconds a flow lives after the client's FIN/RST: its last ACKs and retransmissions, not more.
CLOSING_TIMEOUT = 5
FLOW_MAP_SIZE = 65536
SCRIPT_PATH = "/var/lib/shoal/nft/shoal_dsr.nft"
UNDO_PATH = "/var/lib/shoal/nft/shoal_dsr.undo.nft"
DIGEST_PREFIX = "shoal-dsr "

# A bounded poll: exits 0 when no flow points at the MAC any more, or at the deadline (a drain
# that times out proceeds, like an IPVS drain). Values come in as positional parameters, never
# spliced into the script text.
_DRAIN_SCRIPT = (
    "end=$(( $(date +%s) + $4 )); "
    'while nft list map netdev "$1" "$2" 2>/dev/null | grep -qi -- "$3"; do '
    '[ "$(date +%s)" -ge "$end" ] && break; sleep 1; done; exit 0'
)


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
    client_affinity: bool  # hash on `ip saddr` only (persistence > 0)
    buckets: tuple[Bucket, ...]  # empty: every real server drained

    @property
    def key(self) -> str:
        return f"{self.protocol}_{self.vip.replace('.', '_')}_{self.port}"

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
        # Only TCP says when a flow ends; a UDP flow lives until FLOW_TIMEOUT of silence.
        return self.protocol == "tcp"

    @property
    def modulus(self) -> int:
        return self.buckets[-1].high + 1 if self.buckets else 0


@dataclass(frozen=True, slots=True)
class DsrTable:
    interface: str
    director_mac: str
    services: tuple[DsrService, ...]

    def digest(self) -> str:
        return hashlib.sha256(render_table(self, with_digest=False).encode()).hexdigest()[:16]


# --- building the model ---------------------------------------------------------------------------


def weighted_buckets(members: Sequence[tuple[str, int]]) -> tuple[Bucket, ...]:
    """Contiguous bucket ranges proportional to weight; `members` is (mac, weight), in order."""
    live = [(mac.lower(), w) for mac, w in members if w > 0]
    if not live:
        return ()
    g = 0
    for _, w in live:
        g = math.gcd(g, w)
    out: list[Bucket] = []
    start = 0
    for mac, w in live:
        n = w // g
        out.append(Bucket(start, start + n - 1, mac))
        start += n
    return tuple(out)


def table_from_args(args: Mapping[str, Any]) -> DsrTable:
    """The model from a low state's args (see `reconciler.plan.compile_director`)."""
    services = []
    for s in args["services"]:
        members = [(str(m["mac"]), int(m["weight"])) for m in s["members"]]
        buckets = weighted_buckets(members)
        services.append(
            DsrService(
                protocol=str(s["protocol"]),
                vip=str(s["vip"]),
                port=int(s["port"]),
                # Without buckets there is no hash, so affinity has no meaning (and no trace).
                client_affinity=bool(buckets) and int(s.get("persistence", 0)) > 0,
                buckets=buckets,
            )
        )
    services.sort(key=lambda x: (x.protocol, _ip_key(x.vip), x.port))
    return DsrTable(str(args["interface"]), str(args["director_mac"]).lower(), tuple(services))


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ip.split("."))


# --- rendering ------------------------------------------------------------------------------------


def _flow_key(svc: DsrService) -> str:
    return f"ip saddr . {svc.protocol} sport"


def _hash_expr(svc: DsrService) -> str:
    return "ip saddr" if svc.client_affinity else _flow_key(svc)


def _bucket_map(svc: DsrService) -> str:
    parts = []
    for b in svc.buckets:
        key = str(b.low) if b.low == b.high else f"{b.low}-{b.high}"
        parts.append(f"{key} : {b.mac}")
    return "{ " + ", ".join(parts) + " }"


def _map_decl(svc: DsrService) -> str:
    return (
        f"type ipv4_addr . inet_service : ether_addr; size {FLOW_MAP_SIZE}; "
        f"timeout {FLOW_TIMEOUT}s;"
    )


def _closing_decl(svc: DsrService) -> str:
    # `dynamic` spelled out: nft adds it for a set the rules update, and `add set` must match the
    # existing declaration exactly to be a no-op in an update transaction.
    return (
        f"type ipv4_addr . inet_service; size {FLOW_MAP_SIZE}; flags dynamic,timeout; "
        f"timeout {CLOSING_TIMEOUT}s;"
    )


def _ingress_decl(t: DsrTable) -> str:
    return (
        f'type filter hook ingress device "{t.interface}" priority {INGRESS_PRIORITY}; '
        "policy accept;"
    )


def _dispatch_rule(t: DsrTable, svc: DsrService, digest: str | None) -> str:
    rule = f"ip daddr {svc.vip} {svc.protocol} dport {svc.port} goto {svc.chain}"
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
        rules.append(
            f"ether saddr set {t.director_mac} ether daddr set jhash {_hash_expr(svc)} "
            f"mod {svc.modulus} map {_bucket_map(svc)} {update} {fwd}"
        )
    else:
        # Every real server drained: refuse new flows rather than let the director's own stack
        # answer for the VIP with resets.
        rules.append("drop")
    return rules


def render_table(t: DsrTable, *, with_digest: bool = True) -> str:
    """The whole table as `nft -f` input (a definition, not a transaction); deterministic."""
    digest = t.digest() if with_digest else None
    lines = [f"table {FAMILY} {TABLE} {{"]
    for svc in t.services:
        lines.append(f"\tmap {svc.flow_map} {{ {_map_decl(svc)} }}")
        if svc.tracks_closing:
            lines.append(f"\tset {svc.closing_set} {{ {_closing_decl(svc)} }}")
    lines.append(f"\tchain {INGRESS_CHAIN} {{")
    lines.append(f"\t\t{_ingress_decl(t)}")
    for svc in t.services:
        lines.append(f"\t\t{_dispatch_rule(t, svc, digest)}")
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
    digest = t.digest()
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
        out.append(f"add rule {p} {INGRESS_CHAIN} {_dispatch_rule(t, svc, digest)}")
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


# --- reading the table back from facts ------------------------------------------------------------


class _Unreadable(Exception):
    """The table is not in the shape shoal writes."""


def _objects(canonical_json: str) -> list[dict[str, Any]]:
    data = json.loads(canonical_json)
    if isinstance(data, dict):
        data = data.get("nftables", [])
    if not isinstance(data, list):
        raise _Unreadable("not a list of nft objects")
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
        raise _Unreadable("unexpected hash key")
    return tuple(i for i in items if i is not None)


def _decode_buckets(data: Any) -> tuple[Bucket, ...]:
    elems = data.get("set") if isinstance(data, dict) else None
    if not isinstance(elems, list):
        raise _Unreadable("bucket map is not an anonymous map")
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
) -> tuple[str | None, bool, tuple[Bucket, ...], int]:
    """(director mac, client affinity, buckets, modulus) from a service chain's rules."""
    # The flow lookups (closing, closing starts, established; UDP: established), then the hash.
    lookups = 3 if protocol == "tcp" else 1
    if len(rules) != lookups + 1:
        raise _Unreadable(f"a {protocol} service chain has {lookups + 1} rules")
    *first, second = rules
    for rule in first:
        if not any(isinstance(e, dict) and "@flows_" in str(e) for e in rule):
            raise _Unreadable("flow lookup rule missing")
    if protocol == "tcp" and not all("@ends_" in str(rule) for rule in first[:2]):
        raise _Unreadable("closing flow rules missing")
    if second == [{"drop": None}]:
        return None, False, (), 0
    mac: str | None = None
    affinity = False
    buckets: tuple[Bucket, ...] = ()
    modulus = -1
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
                    raise _Unreadable("bucket map not keyed by jhash")
                modulus = int(jh["mod"])
                affinity = len(_concat_fields(jh["expr"])) == 1
                buckets = _decode_buckets(value["map"]["data"])
        elif "fwd" in e:
            fwd_ok = e["fwd"].get("dev") == interface
    if mac is None or modulus < 0 or not fwd_ok:
        raise _Unreadable("service rule not in shoal's shape")
    return mac, affinity, buckets, modulus


def decode_table(canonical_json: str, interface: str) -> DsrTable:
    """The model back from `nft -j list table netdev shoal_dsr`; raises `_Unreadable`."""
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
        raise _Unreadable("no ingress chain")
    services = []
    director_macs: set[str] = set()
    for expr in rules.get(INGRESS_CHAIN, []):
        vip: str | None = None
        proto: str | None = None
        port: int | None = None
        target: str | None = None
        for e in expr:
            if isinstance(e, dict) and "match" in e:
                field = _payload(e["match"]["left"])
                if field == ("ip", "daddr"):
                    vip = str(e["match"]["right"])
                elif field is not None and field[1] == "dport":
                    proto, port = field[0], int(e["match"]["right"])
            elif isinstance(e, dict) and "goto" in e:
                target = str(e["goto"]["target"])
        if vip is None or proto is None or port is None or target is None:
            raise _Unreadable("dispatch rule not in shoal's shape")
        mac, affinity, buckets, modulus = _decode_service_chain(
            rules.get(target, []), interface, proto
        )
        svc = DsrService(proto, vip, port, affinity, buckets)
        if target != svc.chain or modulus != svc.modulus:
            raise _Unreadable("service chain name or modulus differs")
        if mac is not None:
            director_macs.add(mac)
        services.append(svc)
    if len(director_macs) > 1:
        raise _Unreadable("more than one director MAC")
    extra = chains - {INGRESS_CHAIN} - {s.chain for s in services}
    if extra:
        raise _Unreadable(f"unexpected chains {sorted(extra)}")
    services.sort(key=lambda x: (x.protocol, _ip_key(x.vip), x.port))
    mac = director_macs.pop() if director_macs else ""
    return DsrTable(interface, mac, tuple(services))


def _same(a: DsrTable, b: DsrTable) -> bool:
    # A table whose services are all drained carries no director MAC in its rules.
    if a.interface != b.interface or a.services != b.services:
        return False
    return not b.director_mac or not a.director_mac or a.director_mac == b.director_mac


def current_members(t: DsrTable) -> dict[str, set[str]]:
    """Per service chain, the MACs that hold buckets."""
    return {s.chain: {b.mac for b in s.buckets} for s in t.services}


# --- the state function ---------------------------------------------------------------------------


def _skip(low: LowState, reason: str, *, unknown: bool = False) -> StateResult:
    skipped = SkippedRemoval(host=low.host, state_id=low.id, reason=reason, fact_unknown=unknown)
    return StateResult(skipped=(skipped,))


def _drain_argv(flow_map: str, mac: str, timeout: float) -> Argv:
    return ("sh", "-c", _DRAIN_SCRIPT, "sh", TABLE, flow_map, mac, str(math.ceil(timeout)))


def plan_dsr_table(low: LowState, ctx: PlanContext) -> StateResult:
    """`nft.dsr_table`: bring `netdev shoal_dsr` on the director to the desired model."""
    reason = low.args.get("skip_reason")
    if reason:
        return _skip(low, str(reason))
    facts: HostFacts | None = ctx.facts.get(low.host)
    if facts is None or not facts.nft.known or facts.nft.value is None:
        why = facts.nft.unknown_reason if facts is not None else "no facts"
        return _skip(low, f"nftables ruleset unknown ({why}); table not planned", unknown=True)
    want = table_from_args(low.args)
    present = facts.nft.value.table(FAMILY, TABLE)
    current: DsrTable | None = None
    if present is not None:
        try:
            current = decode_table(present.canonical_json, want.interface)
        except (_Unreadable, ValueError, KeyError, TypeError, IndexError):
            current = None
        if current is not None and _same(current, want):
            return StateResult()

    text = render_table(want)
    if current is not None and current.interface == want.interface:
        script = render_update(want, current)
        how = "update chains, keep flow maps"
    else:
        script = render_replace(want)
        how = "replace table"
    writes = [FileWrite(path=SCRIPT_PATH, content=script, mode="0600")]
    undo: tuple[Argv, ...]
    before: str | None = None
    if present is None:
        undo = (("nft", "delete", "table", FAMILY, TABLE),)
    elif current is not None:
        before = render_table(current)
        writes.append(FileWrite(path=UNDO_PATH, content=render_replace(current), mode="0600"))
        undo = (("nft", "-f", UNDO_PATH),)
    else:
        # Not in shoal's shape: only the executor's snapshot of our tables can restore it.
        before = "(table present, not in shoal's shape)"
        undo = ()
    apply_id = f"{low.host}/{low.id}/apply"
    steps = [
        Step(
            id=apply_id,
            host=low.host,
            state_id=low.id,
            function=low.function,
            subsystem="nft",
            phase=low.phase,
            description=f"nft table {FAMILY} {TABLE} on {want.interface}: {how}",
            change=Change(before=before, after=text),
            writes=tuple(writes),
            commands=(("nft", "-c", "-f", SCRIPT_PATH), ("nft", "-f", SCRIPT_PATH)),
            undo=undo,
        )
    ]
    steps.extend(_drain_steps(low, want, current, apply_id))
    return StateResult(steps=tuple(steps))


def _drain_steps(
    low: LowState, want: DsrTable, current: DsrTable | None, after: str
) -> Iterator[Step]:
    """Wait for established flows of every real server that lost all its buckets."""
    if current is None:
        return
    timeout = float(low.args.get("drain_timeout", 30.0))
    now = current_members(current)
    wanted = current_members(want)
    maps = {s.chain: s.flow_map for s in current.services}
    for chain in sorted(now):
        for mac in sorted(now[chain] - wanted.get(chain, set())):
            yield Step(
                id=f"{low.host}/{low.id}/drain/{chain}/{mac}",
                host=low.host,
                state_id=low.id,
                function=low.function,
                subsystem="nft",
                phase=low.phase,
                description=f"wait up to {timeout:g}s for flows of {mac} in {maps[chain]} to end",
                commands=(_drain_argv(maps[chain], mac, timeout),),
                require=(after,),
            )


def restore_text(args: Mapping[str, Any]) -> str:
    """The full table for the boot restore script (replaces whatever is there)."""
    return render_replace(table_from_args(args))


def macs_of(facts: Iterable[HostFacts]) -> dict[str, dict[str, str]]:
    """host -> interface -> MAC, from the hosts whose interfaces are known."""
    out: dict[str, dict[str, str]] = {}
    for f in facts:
        if f.interfaces.known and f.interfaces.value is not None:
            out[f.host] = {i.name: i.mac.lower() for i in f.interfaces.value if i.mac}
    return out


ABSENT_FUNCTION = "nft.dsr_table_absent"


def plan_dsr_table_absent(low: LowState, ctx: PlanContext) -> StateResult:
    """`nft.dsr_table_absent`: delete the table from a host that is no nftables director now."""
    facts = ctx.facts.get(low.host)
    if facts is None or not facts.nft.known or facts.nft.value is None:
        return _skip(low, "nftables ruleset unknown; table removal not planned", unknown=True)
    present = facts.nft.value.table(FAMILY, TABLE)
    if present is None:
        return StateResult()
    writes: tuple[FileWrite, ...] = ()
    undo: tuple[Argv, ...] = ()
    try:
        interface = _fwd_interface(present.canonical_json)
        current = decode_table(present.canonical_json, interface) if interface else None
    except (_Unreadable, ValueError, KeyError, TypeError, IndexError):
        current = None
    if current is not None:
        writes = (FileWrite(path=UNDO_PATH, content=render_replace(current), mode="0600"),)
        undo = (("nft", "-f", UNDO_PATH),)
    step = Step(
        id=f"{low.host}/{low.id}/delete", host=low.host, state_id=low.id,
        function=low.function, subsystem="nft", phase=low.phase,
        description=f"delete nft table {FAMILY} {TABLE}",
        change=Change(before=render_table(current) if current else "(table present)", after=None),
        writes=writes, commands=(("nft", "delete", "table", FAMILY, TABLE),), undo=undo,
    )  # fmt: skip
    return StateResult(steps=(step,))


def _fwd_interface(canonical_json: str) -> str | None:
    for o in _objects(canonical_json):
        for e in o.get("rule", {}).get("expr", []):
            if isinstance(e, dict) and "fwd" in e:
                return str(e["fwd"].get("dev"))
    return None
