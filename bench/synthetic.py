"""Synthetic config repositories and facts for the plan-scale benchmark (pure, deterministic).

`synthetic_repo(n_real_servers, n_vips)` writes the files of a repository (as `load_tree` takes
them): one cluster with two keepalived directors and `n_vips` services; the real servers are
spread evenly over the services, one host each. `synthetic_facts` gives every host the facts of
a fresh lab host (captured in fixtures/, so they are what the facts script really reports) with
its own name and address, i.e. nothing converged yet: the largest plan there is.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from pathlib import Path

from reconciler.facts.hostfacts import Address, Fact, HostFacts, Interface

FRESH_FACTS = (
    Path(__file__).resolve().parent.parent / "fixtures/facts/facts_script/fresh_namespace.json"
)

# Real servers live in 10.128.0.0/9 (room for far more than 10,000 hosts); VIPs and directors in
# 10.1.0.0/16. These are names in a data structure only: nothing is ever sent to them.
_HOSTS_NET = ipaddress.IPv4Network("10.128.0.0/9")
_VIP_NET = ipaddress.IPv4Network("10.1.1.0/24")
_DIRECTORS = (("lvs1", "10.1.0.11"), ("lvs2", "10.1.0.12"))


def real_server_name(i: int) -> str:
    return f"rs{i + 1:05d}"


def real_server_address(i: int) -> str:
    # Skip .0 and .255 of every /24 so no address reads as a network or broadcast address.
    block, offset = divmod(i, 254)
    return str(_HOSTS_NET.network_address + block * 256 + offset + 1)


def vip_address(j: int) -> str:
    if not 0 <= j < 250:
        raise ValueError("at most 250 VIPs")
    return str(_VIP_NET.network_address + j + 1)


def fake_host_key(name: str) -> str:
    """A well-formed ssh-ed25519 public key blob (base64), derived from the host name."""
    kind = b"ssh-ed25519"
    raw = hashlib.sha256(name.encode()).digest()
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", len(raw)) + raw
    return base64.b64encode(blob).decode()


def assignment(n_real_servers: int, n_vips: int) -> list[list[int]]:
    """Real-server indexes per service: round-robin, so every service gets n/v (+1)."""
    per: list[list[int]] = [[] for _ in range(n_vips)]
    for i in range(n_real_servers):
        per[i % n_vips].append(i)
    return per


def synthetic_repo(n_real_servers: int, n_vips: int = 200) -> dict[str, bytes]:
    """{path: content} of a valid repository with `n_real_servers` real servers."""
    if n_real_servers < 1 or n_vips < 1:
        raise ValueError("need at least one real server and one VIP")
    inv = ["# synthetic inventory (bench)\n"]
    kh = []
    hosts = [*_DIRECTORS]
    hosts += [(real_server_name(i), real_server_address(i)) for i in range(n_real_servers)]
    for name, addr in hosts:
        inv.append(f'\n[hosts.{name}]\naddress = "{addr}"\ninterface = "eth0"\n')
        kh.append(f"{addr} ssh-ed25519 {fake_host_key(name)}\n")
    cluster = [
        "[cluster]\n",
        'name = "big"\n',
        'directors = ["lvs1", "lvs2"]\n',
        'director = "keepalived"\n',
        'arp_method = "sysctl"\n',
    ]
    for j, members in enumerate(assignment(n_real_servers, n_vips)):
        cluster.append(
            f'\n[[service]]\nname = "svc{j + 1:03d}"\nvip = "{vip_address(j)}"\nport = 80\n'
            'protocol = "tcp"\nscheduler = "wlc"\n'
        )
        for i in members:
            cluster.append(
                f'\n  [[service.real_server]]\n  host = "{real_server_name(i)}"\n  weight = 1\n'
            )
    settings = 'approval = "auto"\n\n[verify]\nenabled = false\n'
    return {
        "shoal.toml": settings.encode(),
        "inventory.toml": "".join(inv).encode(),
        "known_hosts": "".join(kh).encode(),
        "clusters/big.toml": "".join(cluster).encode(),
    }


def fresh_facts_template() -> HostFacts:
    return HostFacts.model_validate_json(FRESH_FACTS.read_text())


def host_facts_like(template: HostFacts, name: str, address: str, index: int) -> HostFacts:
    """`template` as host `name`: its hostname, and an eth0 with `address`/24 and its own MAC."""
    mac = "02:00:" + ":".join(f"{(index >> s) & 0xFF:02x}" for s in (24, 16, 8, 0))
    lo = [i for i in (template.interfaces.value or ()) if i.name == "lo"]
    eth0 = Interface(
        name="eth0",
        mac=mac,
        up=True,
        addresses=(Address(address=address, prefix=24, label="eth0"),),
    )
    return template.model_copy(
        update={
            "host": name,
            "hostname": Fact[str].of(name),
            "interfaces": Fact[tuple[Interface, ...]].of((*lo, eth0)),
        }
    )


def synthetic_facts(n_real_servers: int, template: HostFacts | None = None) -> dict[str, HostFacts]:
    """Fresh-host facts for the directors and every real server of `synthetic_repo`."""
    t = template or fresh_facts_template()
    out: dict[str, HostFacts] = {}
    for k, (name, addr) in enumerate(_DIRECTORS):
        out[name] = host_facts_like(t, name, addr, 1_000_000 + k)
    for i in range(n_real_servers):
        name = real_server_name(i)
        out[name] = host_facts_like(t, name, real_server_address(i), i)
    return out
