"""Print the distributions installed in this environment that requirements.lock does not list.

scripts/setup.sh removes them, so the virtual environment holds exactly the lock (and shoal)
after a lock change that drops a package. Standard library only: it runs before anything else.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock_path: str) -> None:
    with open(lock_path, encoding="utf-8") as lock:
        locked = {normal(m.group(1)) for line in lock if (m := _PIN.match(line))}
    locked.add("shoal")
    installed = {normal(d.metadata["Name"]) for d in metadata.distributions()}
    print(" ".join(sorted(installed - locked)))


if __name__ == "__main__":
    main(sys.argv[1])
