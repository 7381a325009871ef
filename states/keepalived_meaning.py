"""What a keepalived.conf means, as far as shoal renders it: for comparing an installed file by
meaning instead of bytes, and for knowing which real servers it already serves.

An installed file that says what shoal would render, in other words, is in sync: a hand-written
keepalived.conf that an import turned into TOML must not be rewritten and reloaded by the first
plan. Both texts are read with `states.keepalived_syntax` and brought to one form:
- comments, whitespace, line breaks and the order of blocks and of statements do not matter
  (statements are sorted; keepalived keeps the last of a repeated single-valued keyword, which
  shoal never writes twice, so a file that repeats one differs);
- the old keyword names are the new ones: `lb_algo` = `lvs_sched`, `lb_kind` = `lvs_method`;
- `delay_loop` of a virtual server without checkers is dropped (it is the checkers' interval);
- a statement that only repeats keepalived's documented default is dropped where shoal renders
  it: `weight 1` (real_server), `delay_loop 60` (virtual_server; not `protocol TCP`: a
  virtual server without `protocol` was measured to become UDP),
  `connect_timeout 5` and a checker's `connect_port` equal to its real server's port,
  `advert_int 1` (vrrp_instance); a VIP without a prefix is /32 (IPv4) or /128 (IPv6), without
  `dev` on the instance's interface;
- addresses are compared as addresses (`10.0.0.1` = `10.000.0.1` is not assumed: canonical text).
Anything else is compared word for word. A file with `include` lines has parts the facts do not
carry: it has no meaning here (`Unreadable`), and is compared by digest as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.facts.hostfacts import HostFacts
from states.ipvs_argv import destination_key
from states.keepalived_conf import rs_key
from states.keepalived_syntax import KeepalivedSyntaxInvalid, Statement, parse_keepalived_text

# A statement in the one form: keyword, its words, its block's statements (None: no block).
Node = tuple[str, tuple[str, ...], "tuple[Node, ...] | None"]

ALIASES = {"lb_algo": "lvs_sched", "lb_kind": "lvs_method"}
CHECKERS = frozenset({"HTTP_GET", "SSL_GET", "TCP_CHECK", "UDP_CHECK", "DNS_CHECK", "SMTP_CHECK"})
# Per kind of block: statements that say only what keepalived does without them.
DEFAULTS: dict[str, frozenset[tuple[str, ...]]] = {
    # Not `protocol TCP`: keepalived 2.2.7 programmed a virtual server without `protocol` as
    # UDP (next to a UDP one, on the VM directors: tests/lab/test_import_vm_keepalived.py).
    "virtual_server": frozenset({("delay_loop", "60")}),
    "real_server": frozenset({("weight", "1")}),
    "checker": frozenset({("connect_timeout", "5")}),
    "vrrp_instance": frozenset({("advert_int", "1")}),
}


class Unreadable(ValueError):
    """The text has no meaning here (bad syntax, or parts in included files)."""


@dataclass(frozen=True, slots=True)
class Meaning:
    nodes: tuple[Node, ...]
    real_servers: frozenset[str]  # rs keys, as the keepalived backend's ledger names them


def meaning_of(text: str, name: str) -> Meaning:
    """The one form of a keepalived.conf's text; Unreadable when it has none here."""
    try:
        parsed = parse_keepalived_text(text, name)
    except KeepalivedSyntaxInvalid as exc:
        raise Unreadable(str(exc)) from None
    if parsed.includes:
        pattern, origin = parsed.includes[0]
        raise Unreadable(f"{origin}: include {pattern}: its parts are not in the facts")
    nodes = _sorted(_top(s) for s in parsed.statements)
    return Meaning(nodes=nodes, real_servers=frozenset(_real_servers(parsed.statements)))


def same_meaning(a: str, b: str) -> bool:
    """Whether two keepalived.conf texts mean the same; False when either has no meaning here."""
    try:
        return meaning_of(a, "a").nodes == meaning_of(b, "b").nodes
    except Unreadable:
        return False


def _sorted(nodes: Iterable[Node]) -> tuple[Node, ...]:
    # repr: a node with a block and one without may share keyword and words (None vs tuple).
    return tuple(sorted(nodes, key=repr))


def _address(word: str) -> str:
    try:
        return str(ipaddress.ip_address(word))
    except ValueError:
        return word


def _node(s: Statement, children: tuple[Node, ...] | None) -> Node:
    keyword = ALIASES.get(s.keyword, s.keyword)
    return (keyword, tuple(s.words[1:]), children)


def _plain(s: Statement) -> Node:
    block = None if s.block is None else _sorted(_plain(c) for c in s.block)
    return _node(s, block)


def _dropping(block: list[Statement], kind: str) -> list[Statement]:
    defaults = DEFAULTS.get(kind, frozenset())
    return [
        c for c in block
        if c.block is not None
        or (ALIASES.get(c.keyword, c.keyword), *c.words[1:]) not in defaults
    ]  # fmt: skip


def _top(s: Statement) -> Node:
    if s.keyword == "virtual_server" and s.block is not None and len(s.words) == 3:
        head = ("virtual_server", (_address(s.words[1]), s.words[2]))
        kept = _dropping(s.block, "virtual_server")
        servers = s.children("real_server")
        if not any(k.keyword in CHECKERS for rs in servers for k in rs.block or []):
            # delay_loop is the checkers' interval: without a checker it says nothing.
            kept = [c for c in kept if c.keyword != "delay_loop"]
        return (*head, _sorted(_virtual_server_child(c) for c in kept))
    if s.keyword == "vrrp_instance" and s.block is not None:
        iface = s.value("interface")
        dev = iface.words[1] if iface is not None and len(iface.words) == 2 else None
        kids: list[Node] = []
        for c in _dropping(s.block, "vrrp_instance"):
            if c.keyword in ("virtual_ipaddress", "virtual_ipaddress_excluded") and c.block:
                vips = _sorted(("", _vip(v.words, dev), None) for v in c.block)
                kids.append((c.keyword, tuple(c.words[1:]), vips))
            else:
                kids.append(_plain(c))
        return ("vrrp_instance", tuple(s.words[1:]), _sorted(kids))
    return _plain(s)


def _virtual_server_child(c: Statement) -> Node:
    if c.keyword == "real_server" and c.block is not None and len(c.words) == 3:
        port = c.words[2]
        kids: list[Node] = []
        for k in _dropping(c.block, "real_server"):
            if k.keyword in CHECKERS and k.block is not None:
                body = [
                    x for x in _dropping(k.block, "checker")
                    if not (x.keyword == "connect_port" and x.words[1:] == [port])
                ]  # fmt: skip
                kids.append((k.keyword, tuple(k.words[1:]), _sorted(_plain(x) for x in body)))
            else:
                kids.append(_plain(k))
        return ("real_server", (_address(c.words[1]), port), _sorted(kids))
    return _plain(c)


def _vip(words: list[str], dev: str | None) -> tuple[str, ...]:
    """One virtual_ipaddress line: `ADDR[/LEN] [dev IF] ...` with the prefix and dev filled in."""
    if not words:
        return ()
    address, _, prefix = words[0].partition("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return tuple(words)
    rest = list(words[1:])
    if "dev" not in rest and dev is not None:
        rest += ["dev", dev]
    return (f"{ip}/{prefix or ip.max_prefixlen}", *rest)


def _real_servers(statements: list[Statement]) -> set[str]:
    out = set()
    for s in statements:
        if s.keyword != "virtual_server" or s.block is None or len(s.words) != 3:
            continue
        proto = s.value("protocol")
        if proto is None or len(proto.words) != 2:
            continue  # which protocol keepalived uses then is not known here (see DEFAULTS)
        protocol = proto.words[1]
        try:
            vip, port = str(ipaddress.ip_address(s.words[1])), int(s.words[2])
        except ValueError:
            continue
        for rs in s.children("real_server"):
            if len(rs.words) == 3:
                try:
                    address = str(ipaddress.ip_address(rs.words[1]))
                except ValueError:
                    continue
                out.add(rs_key(protocol.lower(), vip, port, address))
    return out


def installed_text(facts: HostFacts, path: str, sha: str | None) -> str | None:
    """The installed file's text, when the facts carry that very file."""
    files = facts.files.value if facts.files.known else None
    info = (files or {}).get(path)
    if sha is None or info is None or info.content is None or info.sha256 != sha:
        return None
    return info.content


def brought_real_servers(
    wanted: set[str], facts: HostFacts, installed: str | None, existed: bool
) -> set[str]:
    """Of the `wanted` real servers of a new file, those the host did not serve already.

    Only those become shoal's when the file is written: one the installed file (or the IPVS
    table) had before was made by hand and stays foreign until an adopting host hands it over.
    When the installed file's real servers cannot be known (content not gathered, includes)
    and the IPVS table is unknown too, none: a real server shoal cannot tell from a foreign one
    is treated as foreign (nothing foreign is claimed).
    """
    present = served_real_servers(facts, installed)
    if present is None:
        return wanted if not existed else set()
    return wanted - present


def served_real_servers(facts: HostFacts, installed: str | None) -> set[str] | None:
    """The real servers the host serves now, from the installed file read by meaning and the
    IPVS table (ledger keys); None when neither can be read."""
    present: set[str] = set()
    known = False
    if installed is not None:
        try:
            present |= meaning_of(installed, "installed").real_servers
            known = True
        except Unreadable:
            pass
    if facts.ipvs.known and facts.ipvs.value is not None:
        known = True
        present |= {
            destination_key(d.protocol, d.service_address, d.service_port, d.address)
            for d in facts.ipvs.value.destinations
        }
    return present if known else None
