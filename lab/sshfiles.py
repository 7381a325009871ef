"""The lab's OpenSSH files: keys (ssh-keygen), each host's sshd_config, known_hosts, /etc/hosts.

One ed25519 host key per host and one client key for the controller, all fresh per `up`. Hosts
accept root with that key only; known_hosts pins every host's key by address.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from lab import proc

CLIENT_KEY = "id_ed25519"
HOST_KEY = "ssh_host_ed25519_key"
KNOWN_HOSTS = "known_hosts"


async def generate_key(path: Path, comment: str) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".pub").unlink(missing_ok=True)
    await proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


async def generate_keys(lab_dir: Path, host_dirs: dict[str, Path], lab_id: str) -> None:
    """The client key and every host key, a few ssh-keygen runs at a time."""
    limit = asyncio.Semaphore(8)

    async def one(path: Path, comment: str) -> None:
        async with limit:
            await generate_key(path, comment)

    jobs = [one(lab_dir / CLIENT_KEY, f"shoal-lab-{lab_id}-controller")]
    jobs += [one(d / HOST_KEY, f"shoal-lab-{lab_id}-{name}") for name, d in host_dirs.items()]
    await asyncio.gather(*jobs)


def public_key(private: Path) -> str:
    """`type base64` of a key pair, without the comment."""
    fields = private.with_name(private.name + ".pub").read_text().split()
    return f"{fields[0]} {fields[1]}"


def sshd_config(host: str, lab_id: str, host_dir: Path, *, debug: bool) -> str:
    # Logged at VERBOSE (DEBUG1 on request) to the file given with -E, so tests and benchmarks
    # can count connections and sessions on the host side.
    return "\n".join(
        [
            f"# sshd of lab host {host} (lab {lab_id}); written by the lab at every up",
            "Port 22",
            "ListenAddress 0.0.0.0",
            f"HostKey {host_dir / HOST_KEY}",
            f"LogLevel {'DEBUG1' if debug else 'VERBOSE'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile /etc/shoal-lab/authorized_keys",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "PermitTunnel no",
            # Benchmarks open many connections and channels at once.
            "MaxStartups 200:30:400",
            "MaxSessions 64",
            "Subsystem sftp internal-sftp",
            "",
        ]
    )


def known_hosts(entries: list[tuple[str, str, str]]) -> str:
    """(address, public key, host name) -> known_hosts text, pinned by address."""
    return "".join(f"{addr} {key} {name}\n" for addr, key, name in entries)


def etc_hosts(entries: list[tuple[str, str]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{addr}\t{name}" for addr, name in entries]
    return "\n".join(lines) + "\n"
