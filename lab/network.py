"""The lab's links on the machine side: subnet choice, the bridge, veths, and their removal.

The bridge holds the controller address (.254) and nothing else: hosts get no default route,
the bridge does not forward IPv4 off itself, answers ARP only for its own address, and no NAT
rule is ever added. Lab traffic cannot leave the lab.

IPv6 lives only inside the lab: beside its IPv4 /24 every lab has a ULA /64 derived from the
same index (`fd77:77:77:<index in hex>::/64`), held by the hosts alone. The bridge and its
machine-side ports have IPv6 disabled, so the machine has no address, route or neighbour in the
lab's /64; they still bridge IPv6 frames, which is L2 and needs no IPv6 stack on the port.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path

from lab import proc
from lab.naming import DEMO_LAB_ID, bridge_name, mac_address, veth_re
from lab.topology import CONTROLLER_OCTET

SUBNET_BASE = ipaddress.IPv4Network("10.77.0.0/16")


def subnet_of(index: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.77.{index}.0/24")


def subnet6_of(index: int) -> ipaddress.IPv6Network:
    """The lab's ULA /64 beside 10.77.<index>.0/24."""
    return ipaddress.IPv6Network(f"fd77:77:77:{index:x}::/64")


def address6_of(index: int, octet: int) -> ipaddress.IPv6Address:
    """10.77.<index>.<octet> in the lab's /64: the octet's decimal digits read as one hex group,
    so .21 is ::21 and .100 (the VIP convention) is ::100, as a person reading both expects."""
    return subnet6_of(index).network_address + int(str(octet), 16)


async def machine_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix the machine already routes or holds (the default route excluded)."""
    routes = json.loads(
        (await proc.run(["ip", "-j", "-4", "route", "show", "table", "all"])).stdout
    )
    addrs = json.loads((await proc.run(["ip", "-j", "-4", "addr", "show"])).stdout)
    nets: list[ipaddress.IPv4Network] = []
    for r in routes:
        dst = r.get("dst", "default")
        if dst != "default":
            net = ipaddress.IPv4Network(dst, strict=False)
            if net.prefixlen > 0:
                nets.append(net)
    for link in addrs:
        for a in link.get("addr_info", []):
            nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


async def allocate_subnet(lab_id: str, taken_by_labs: Iterable[str]) -> int:
    """The third octet of a free 10.77.N.0/24; the demo lab always gets 10.77.0.0/24."""
    used = await machine_networks()
    lab_nets = [ipaddress.IPv4Network(s) for s in taken_by_labs]
    candidates = [0] if lab_id == DEMO_LAB_ID else list(range(1, 255))
    for index in candidates:
        net = subnet_of(index)
        if any(net.overlaps(u) for u in (*used, *lab_nets)):
            continue
        return index
    if lab_id == DEMO_LAB_ID:
        raise RuntimeError("10.77.0.0/24 is already in use on this machine (another demo lab?)")
    raise RuntimeError("no free /24 left in 10.77.0.0/16 for another lab")


def write_sysctl(path: str, value: str) -> None:
    Path("/proc/sys", path).write_text(value)


async def create_bridge(lab_id: str, index: int) -> None:
    br = bridge_name(lab_id)
    net = subnet_of(index)
    batch = (
        f"link add {br} address {mac_address(index, CONTROLLER_OCTET)} type bridge "
        # No multicast snooping: the bridge (without IPv6) hears no MLD reports, and a snooping
        # bridge would then deliver a Neighbour Solicitation to a solicited-node group to nobody.
        "forward_delay 0 stp_state 0 mcast_snooping 0\n"
    )
    await proc.run(["ip", "-batch", "-"], input=batch)
    # Before any address or port exists: nothing in the lab is routed or answered for elsewhere,
    # and the machine takes no part in the lab's IPv6 (no address, no route, no neighbours).
    write_sysctl(f"net/ipv6/conf/{br}/disable_ipv6", "1")
    write_sysctl(f"net/ipv4/conf/{br}/forwarding", "0")
    write_sysctl(f"net/ipv4/conf/{br}/arp_ignore", "1")
    write_sysctl(f"net/ipv4/conf/{br}/arp_announce", "2")
    batch = f"addr add {net[CONTROLLER_OCTET]}/24 dev {br}\nlink set {br} up\n"
    await proc.run(["ip", "-batch", "-"], input=batch)


async def add_veths(lab_id: str, index: int, hosts: list[tuple[str, int, int, str]]) -> None:
    """(veth name, host octet, host init pid, netns name) -> eth0 in each host, port on bridge.

    One `ip -batch` for all hosts: creating links one process at a time is most of the cost of
    a big lab.
    """
    br = bridge_name(lab_id)
    lines = []
    for veth, octet, pid, _ in hosts:
        lines.append(
            f"link add {veth} address {mac_address(index, octet, bridge_side=True)} type veth "
            f"peer name eth0 address {mac_address(index, octet)} netns {pid}"
        )
    await proc.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    for veth, *_ in hosts:
        # The port only bridges: the machine's IPv6 stack stays off it (frames still pass).
        write_sysctl(f"net/ipv6/conf/{veth}/disable_ipv6", "1")
    lines = [f"link set {veth} master {br} up" for veth, *_ in hosts]
    lines += [f"netns attach {ns} {pid}" for _, _, pid, ns in hosts]
    await proc.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n")


async def set_port(veth: str, up: bool) -> None:
    await proc.run(["ip", "link", "set", veth, "up" if up else "down"])


async def link_names() -> list[str]:
    links = json.loads((await proc.run(["ip", "-j", "link", "show"])).stdout)
    return [str(link["ifname"]) for link in links]


async def lab_links(lab_id: str) -> list[str]:
    """The lab's bridge and bridge-side veths that exist on the machine now."""
    pattern = veth_re(lab_id)
    return [n for n in await link_names() if n == bridge_name(lab_id) or pattern.match(n)]


async def delete_links(names: list[str]) -> None:
    # -force: a veth may vanish on its own while its namespace is being destroyed.
    if names:
        batch = "".join(f"link del {n}\n" for n in names)
        await proc.run(["ip", "-force", "-batch", "-"], input=batch, check=False)
