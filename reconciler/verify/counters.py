"""The probe counter tables: the nft text that counts the verification's packets where they land.

One short-lived netdev ingress table per host (`shoal_verify_<run>`), named counters only,
policy accept: it counts and never drops. `reconciler.verify.traffic` installs the tables, reads the
counters back (`reconciler.facts.parsers.nft_counters`) and removes them when the phase ends.
An IPv6 service's matches are `ip6 saddr/daddr`: the client's address is then its IPv6 one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.desired.models import Service

PROBE_PRIORITY = -300  # before any director chain (the DSR backend's runs at 101 and ends in fwd)


@dataclass
class CounterTable:
    host: str
    device: str
    table: str
    rules: list[tuple[str, str]] = field(default_factory=list)  # (counter name, match)
    installed: bool = False

    def add(self, match: str) -> str:
        name = f"c{len(self.rules)}"
        self.rules.append((name, match))
        return name

    def ruleset(self) -> str:
        # Every value here is validated by the models (IP addresses, ports, interface names).
        lines = [f"table netdev {self.table} {{"]
        lines += [f"\tcounter {name} {{ }}" for name, _ in self.rules]
        lines += [
            "\tchain probe {",
            f'\t\ttype filter hook ingress device "{self.device}" priority {PROBE_PRIORITY};'
            " policy accept;",
        ]
        lines += [f'\t\t{match} counter name "{name}"' for name, match in self.rules]
        lines += ["\t}", "}", ""]
        return "\n".join(lines)


def _ip(svc: Service) -> str:
    """nft's name of the service's network header (`ip` or `ip6`)."""
    return "ip6" if svc.family == 6 else "ip"


def to_vip(client_addr: str, svc: Service, *, syn_only: bool) -> str:
    """The match for the client's packets to the service's VIP:port."""
    ip = _ip(svc)
    base = f"{ip} saddr {client_addr} {ip} daddr {svc.vip} {svc.protocol} dport {svc.port}"
    if svc.protocol == "tcp" and syn_only:
        # One connection = one SYN; counting SYNs counts requests, not packets.
        return base + " tcp flags & (syn | ack) == syn"
    return base


def from_vip(client_addr: str, svc: Service) -> str:
    """The match for replies from the service's VIP:port to the client."""
    ip = _ip(svc)
    return f"{ip} saddr {svc.vip} {ip} daddr {client_addr} {svc.protocol} sport {svc.port}"
