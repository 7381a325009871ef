"""The bench's shoal config repository for a lab: one cluster, sysctl ARP method, one VIP.

The cluster's director (lvs1, nftables backend: this lab's kernel has no IPVS) is converged once
before the measurements and never reset, so every measured run has the same job as the peers:
the real servers. Its facts are still gathered on every shoal run (one host more for shoal).
The inventory lists only the cluster's hosts, since shoal gathers every inventory host.

The shoal-sudo variant is the same repository plus a `[login]` table: shoal logs in as
`deploy` and becomes root through sudo and its wrapper (issue 15), on the same hosts, with root
logins still allowed for the peers.
"""

from __future__ import annotations

from pathlib import Path

from lab import Lab

DIRECTOR = "lvs1"
VIP_OCTET = 100
PORT = 80
SUDO_USER = "deploy"


def vip_of(lab: Lab) -> str:
    return lab.subnet.rsplit(".", 1)[0] + f".{VIP_OCTET}"


def real_servers(lab: Lab) -> list[str]:
    return [h.name for h in lab.hosts.values() if h.role == "real_server"]


def login_toml(user: str) -> str:
    return f'\n[login]\nuser = "{user}"\nbecome = "sudo"\n'


def settings_toml(batch_size: int, login_user: str | None = None) -> str:
    # Auto approval and no traffic verification: the peers do neither. All real servers change
    # at once, as the peers (forks = N, no serial) do.
    login = login_toml(login_user) if login_user is not None else ""
    return (
        'approval = "auto"\n'
        'drift = "report"\n\n'
        "[apply]\n"
        f"batch_size = {batch_size}\n"
        f"max_concurrent_hosts = {max(batch_size + 1, 1)}\n\n"
        "[verify]\n"
        "enabled = false\n"
    ) + login


def cluster_toml(vip: str, hosts: list[str], director: str = DIRECTOR) -> str:
    lines = [
        "[cluster]",
        'name = "bench"',
        f'directors = ["{director}"]',
        'director = "nftables"',
        'arp_method = "sysctl"',
        "",
        "[[service]]",
        'name = "http"',
        f'vip = "{vip}"',
        f"port = {PORT}",
        'protocol = "tcp"',
        'scheduler = "wlc"',
        'check = { type = "none" }',
    ]
    for h in hosts:
        lines += ["", "  [[service.real_server]]", f'  host = "{h}"', "  weight = 1"]
    return "\n".join(lines) + "\n"


def inventory_toml(addresses: dict[str, str]) -> str:
    out = ["# The bench cluster's hosts (written by the bench)."]
    for name, addr in addresses.items():
        out += ["", f"[hosts.{name}]", f'address = "{addr}"', 'interface = "eth0"']
    return "\n".join(out) + "\n"


def known_hosts_for(text: str, addresses: set[str]) -> str:
    return "".join(line + "\n" for line in text.splitlines() if line.split(" ", 1)[0] in addresses)


def write_repo(lab: Lab, dest: Path, login_user: str | None = None) -> Path:
    """Write the repository for `lab` into `dest` (created) and return it; with `login_user`,
    shoal logs in as that user and becomes root through sudo."""
    rs = real_servers(lab)
    names = [DIRECTOR, *rs]
    addresses = {n: lab.hosts[n].address for n in names}
    (dest / "clusters").mkdir(parents=True, exist_ok=True)
    (dest / "shoal.toml").write_text(settings_toml(len(rs), login_user))
    (dest / "inventory.toml").write_text(inventory_toml(addresses))
    (dest / "known_hosts").write_text(
        known_hosts_for(lab.known_hosts_path.read_text(), set(addresses.values()))
    )
    (dest / "clusters/bench.toml").write_text(cluster_toml(vip_of(lab), rs))
    return dest
