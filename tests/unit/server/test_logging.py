"""`shoal serve`'s log lines: JSON objects, and every line of a look, an approval or a run
carries its cluster, plan and run ids, whichever module logged it (log_context)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

from reconciler.logfmt import JsonFormatter, log_context
from tests.unit.server.fake_cluster import FakeCluster, set_in

AUTO = set_in("shoal.toml", 'approval = "manual"', 'approval = "auto"')


async def test_a_run_can_be_followed_by_its_ids(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        fc = FakeCluster(tmp_path, AUTO)
        await fc.controller.reconcile_once()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (run,) = fc.store.list_runs()
    of_run = [line["msg"] for line in lines if line.get("run_id") == run.id]
    assert of_run == ["applying", "run finished"]
    of_plan = [line["msg"] for line in lines if line.get("plan_id") == run.plan_id]
    assert of_plan == ["plan created", "applying", "run finished"]
    assert all(line["clusters"] == "web" for line in lines if line.get("plan_id"))
    assert {line["level"] for line in lines} <= {"info", "warning", "error"}


async def test_ids_reach_lines_of_other_modules_and_of_tasks_started_inside() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    other = logging.getLogger("reconciler.apply.somewhere")
    other.addHandler(handler)
    other.setLevel(logging.INFO)
    try:
        with log_context(plan_id="p1", clusters="web"):
            with log_context(run_id="r1"):
                await asyncio.create_task(asyncio.to_thread(lambda: None))
                await asyncio.create_task(_log(other, "inside"))
            other.info("after the run", extra={"host": "web1"})
        other.info("outside")
    finally:
        other.removeHandler(handler)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(g["msg"], g.get("plan_id"), g.get("run_id"), g.get("host")) for g in got] == [
        ("inside", "p1", "r1", None),
        ("after the run", "p1", None, "web1"),
        ("outside", None, None, None),
    ]


async def _log(logger: logging.Logger, msg: str) -> None:
    logger.info(msg)
