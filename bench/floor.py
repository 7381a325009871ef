"""The floor: plain asyncssh, one connection per host, one script reading the facts, all hosts at
once. Nothing shoal does on top (pooling, parsing, planning) is here.

Run as its own process (`python -m bench.floor SCRIPTS.json KNOWN_HOSTS KEY`), like the tools
it is compared with, so interpreter start-up counts for everyone. It imports asyncssh only.
SCRIPTS.json maps each host address to shoal's facts script for that host (the bench writes
it), so both read the same facts from the same hosts.
"""

from __future__ import annotations

import asyncio
import json
import sys

import asyncssh


async def _one(address: str, script: str, known_hosts: object, key: object) -> int:
    async with asyncssh.connect(
        address,
        username="root",
        known_hosts=known_hosts,
        client_keys=[key],
        agent_path=None,
        config=None,
        preferred_auth="publickey",
    ) as conn:
        result = await conn.run("sh -s", input=script, check=False)
        return len(result.stdout or "")


async def _main(scripts: dict[str, str], known_hosts_path: str, key_path: str) -> int:
    known_hosts = asyncssh.read_known_hosts(known_hosts_path)
    key = asyncssh.read_private_key(key_path)
    sizes = await asyncio.gather(*(_one(a, s, known_hosts, key) for a, s in scripts.items()))
    print(json.dumps({"hosts": len(sizes), "bytes": sum(sizes), "empty": sizes.count(0)}))
    return 0 if all(sizes) else 1


def main(argv: list[str]) -> int:
    scripts_json, known_hosts_path, key_path = argv
    with open(scripts_json) as f:
        scripts = json.load(f)
    return asyncio.run(_main(scripts, known_hosts_path, key_path))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
