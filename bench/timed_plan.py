"""`shoal plan` as the `shoal` entry point runs it, timing its SSH round trip apart.

Run as `python -m bench.timed_plan REPO --key KEY`. It wraps the plan command's
`gather_over_ssh` (connecting, the facts script, its answer: the SSH round trip) with a clock and
then calls `reconciler.cli.main:main` exactly as the `shoal` script does; at exit it prints
`bench-timed-plan: gather_s=<seconds>` on stderr. The caller times the whole process from its
start, so wall time minus gather_s is what `shoal plan` costs outside the round trip: interpreter
start, imports, loading the repository, planning, printing. Importing this module adds nothing
the plan command does not import itself (time, sys, atexit).
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any

MARK = "bench-timed-plan: gather_s="
_spent = [0.0]


def _install() -> None:
    import reconciler.cli.plan as plan_cmd

    # gather_over_ssh imports the SSH modules (asyncssh) on its first call: imports are not the
    # round trip, so they are loaded here, outside the clock, as they would be inside it.
    import reconciler.facts.gather
    import reconciler.transport.connect  # noqa: F401

    real = plan_cmd.gather_over_ssh

    async def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await real(*args, **kwargs)
        finally:
            _spent[0] += time.perf_counter() - t0

    plan_cmd.gather_over_ssh = timed
    atexit.register(lambda: print(f"{MARK}{_spent[0]:.6f}", file=sys.stderr, flush=True))


def gather_seconds(output: str) -> float | None:
    """The gather time a run printed, or None."""
    for line in output.splitlines():
        if line.startswith(MARK):
            return float(line[len(MARK) :])
    return None


def main() -> None:
    _install()
    from reconciler.cli.main import main as shoal_main

    sys.argv = ["shoal", "plan", *sys.argv[1:]]
    shoal_main()


if __name__ == "__main__":
    main()
