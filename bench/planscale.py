"""Plan scale: load + plan of a synthetic repository with N real servers over V VIPs, in process.

Run as `python -m bench.planscale N [V] [--reps R]`; prints one JSON line. Each run starts from
a fresh interpreter so one size's garbage does not slow the next. Time is measured without
tracemalloc (it slows allocation-heavy code several times); peak memory in a separate pass with
it. The facts are built before the clock starts: gathering is not planning. Each repetition
gets facts built anew (equal values, new objects), as every pass of the controller does, so the
facts digests (computed once per facts object, by the planner) are inside every measured plan,
not only the first repetition's.

`replan`: the controller's next pass over the same revision with unchanged hosts: the plan is
made again from facts built anew with the `PlanReuse` of the previous plan
(`reconciler.plan.reuse`): every host's plan is handed back, the compile and the digests remain.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import tracemalloc

from bench.synthetic import fresh_facts_template, synthetic_facts, synthetic_repo
from reconciler.desired.loader import load_tree
from reconciler.plan.planner import plan_desired
from reconciler.plan.reuse import PlanReuse


def measure(n: int, vips: int, reps: int) -> dict[str, float]:
    files = synthetic_repo(n, vips)
    template = fresh_facts_template()
    loads, plans, replans = [], [], []
    steps = 0
    for _ in range(reps):
        facts = synthetic_facts(n, template)
        t0 = time.perf_counter()
        desired = load_tree(files)
        t1 = time.perf_counter()
        plan = plan_desired(desired, facts)
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        plans.append(t2 - t1)
        steps = sum(len(hp.steps) for hp in plan.hosts.values())
        del desired, plan
    desired = load_tree(files)
    reuse = PlanReuse()
    first = plan_desired(desired, synthetic_facts(n, template), reuse=reuse)
    for _ in range(reps):
        facts = synthetic_facts(n, template)
        t0 = time.perf_counter()
        again = plan_desired(desired, facts, reuse=reuse)
        replans.append(time.perf_counter() - t0)
        if again.id != first.id or reuse.reused != len(first.hosts):
            raise SystemExit("replan: the reused plan differs from the first")
        del again, facts
    del desired, first, reuse
    facts = synthetic_facts(n, template)
    tracemalloc.start()
    desired = load_tree(files)
    plan_desired(desired, facts)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "real_servers": n,
        "vips": vips,
        "load_s": statistics.median(loads),
        "plan_s": statistics.median(plans),
        "load_min_s": min(loads),
        "plan_min_s": min(plans),
        "replan_s": statistics.median(replans),
        "replan_min_s": min(replans),
        "peak_mib": peak / 2**20,
        "steps": steps,
    }


def main(argv: list[str]) -> int:
    reps = 3
    if "--reps" in argv:
        i = argv.index("--reps")
        reps = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    n = int(argv[0])
    vips = int(argv[1]) if len(argv) > 1 else 200
    print(json.dumps(measure(n, vips, reps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
