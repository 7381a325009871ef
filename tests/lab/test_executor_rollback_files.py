"""Rollback of what steps' *commands* do to files, and the pruning of old backups, on a lab host.

`file.absent` removes a file with `rm -f` and `service.enabled` / `service.disabled` add or
remove the unit's multi-user.target.wants link with `systemctl enable|disable`: no FileWrite
names these paths, so the phase script must find them in the commands, snapshot them before the
phase and put them back on rollback (a removed file byte for byte with its mode, a removed link
with its exact target, a new link gone). The steps here carry no undo commands on purpose: only
the snapshot can bring the host back.

The module brings up its own one-host lab, because it plants files, links and fake backup
directories that the session lab's other users must not see.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lab import Lab, Topology
from reconciler.apply.executor import apply_plan
from reconciler.apply.host_phase import BACKUP_ROOT, KEEP_BACKUPS
from reconciler.apply.runresult import RunResult
from reconciler.apply.snapshot_targets import WANTS_DIR
from reconciler.plan.steps import Phase, Step
from tests.lab.executor_support import (
    desired_for,
    hook,
    install_hooks,
    make_plan,
    step,
    transport_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

HOST = "web1"
UNITS = "/etc/systemd/system"
KEPT = "/etc/shoal-rbfiles/kept.conf"  # removed by step 0 (file.absent)
NEW_UNIT = "shoal-rbnew.service"  # enabled by step 1 (service.enabled)
OLD_UNIT = "shoal-rbold.service"  # disabled by step 2 (service.disabled)
# Bytes a text round trip would change: no final newline, a tab, a non-ASCII byte, CRLF.
KEPT_BYTES = "a = 1\r\n\tb = caf\u00e9\nno newline at the end"
N_STEPS = 3


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def files_lab(session_token: str) -> AsyncIterator[Lab]:
    async with Lab.up(f"f{session_token}", Topology.build(0, 1, 0), ephemeral=True) as lab:
        unit = "[Unit]\nDescription=shoal rollback test\n[Service]\nExecStart=/bin/true\n"
        unit += "[Install]\nWantedBy=multi-user.target\n"
        await lab.exec(HOST, ["mkdir", "-p", "/etc/shoal-rbfiles"])
        for name in (NEW_UNIT, OLD_UNIT):
            await lab.exec(HOST, ["sh", "-c", f"cat >{UNITS}/{name}"], input=unit)
        await lab.exec(HOST, ["sh", "-c", f"cat >{KEPT}; chmod 0640 {KEPT}"], input=KEPT_BYTES)
        # A link made by hand, to a target `systemctl enable` would not choose: the restore
        # must give back this exact link, not one systemctl would make.
        await lab.exec(HOST, ["ln", "-s", f"/etc/shoal-rbfiles/../../{UNITS}/{OLD_UNIT}",
                              f"{WANTS_DIR}/{OLD_UNIT}"])  # fmt: skip
        yield lab


def _steps() -> list[Step]:
    return [
        step(HOST, 0, "file", [("rm", "-f", KEPT)], []),
        step(HOST, 1, "service", [("systemctl", "enable", NEW_UNIT)], []),
        step(HOST, 2, "service", [("systemctl", "disable", OLD_UNIT)], []),
    ]


async def _files(lab: Lab) -> str:
    """The removed file's bytes and mode, and every link of the wants directory with its target."""
    res = await lab.exec(
        HOST,
        ["sh", "-c", f"stat -c '%a %s' {KEPT} && od -c {KEPT}; "
         f"find {WANTS_DIR} -printf '%p %y %l\\n' | sort"],
        check=False,
    )  # fmt: skip
    return f"rc={res.returncode}\n{res.stdout}{res.stderr}"


def _explain(result: RunResult) -> str:
    return result.model_dump_json(indent=1, exclude={"phases"})


@pytest.mark.parametrize("failing", range(N_STEPS))
async def test_removed_file_and_unit_links_come_back_byte_for_byte(
    files_lab: Lab, failing: int
) -> None:
    lab = files_lab
    before = await _files(lab)
    assert f"{WANTS_DIR}/{OLD_UNIT} l /etc/shoal-rbfiles/../..//etc/systemd" in before
    assert f"{WANTS_DIR}/{NEW_UNIT}" not in before
    await install_hooks(lab, HOST, N_STEPS)
    await lab.inject_failing_command(HOST, hook(HOST, failing), exit_code=4)
    started = time.monotonic()
    try:
        desired = desired_for(lab, command_timeout=10)
        async with transport_for(lab, desired) as t:
            result = await apply_plan(make_plan({HOST: _steps()}), desired, t)
    finally:
        await lab.clear_injections(HOST)
    assert time.monotonic() - started < 20
    assert not result.ok
    assert [s.result for s in result.hosts[HOST]] == (
        [True] * failing + [False] + [None] * (N_STEPS - failing - 1)
    ), _explain(result)
    assert await _files(lab) == before, _explain(result)
    (rb,) = result.rollbacks
    assert rb.proven, rb.differences
    # The snapshot named each path, including the ones only a command touches.
    (phase,) = result.phases
    assert set(phase.snapshot_files) == {KEPT, f"{WANTS_DIR}/{NEW_UNIT}", f"{WANTS_DIR}/{OLD_UNIT}"}


async def test_success_keeps_the_change_and_snapshot_holds_the_link(files_lab: Lab) -> None:
    """The same steps succeed: the changes stay; the pre snapshot recorded the link's target."""
    lab = files_lab
    before = await _files(lab)
    await install_hooks(lab, HOST, N_STEPS)
    desired = desired_for(lab, command_timeout=10)
    async with transport_for(lab, desired) as t:
        result = await apply_plan(make_plan({HOST: _steps()}), desired, t)
    assert result.ok, _explain(result)
    try:
        after = await _files(lab)
        assert "No such file" in after and f"{WANTS_DIR}/{OLD_UNIT}" not in after
        assert f"{WANTS_DIR}/{NEW_UNIT} l {UNITS}/{NEW_UNIT}" in after
        (phase,) = result.phases
        k = list(phase.snapshot_files).index(f"{WANTS_DIR}/{OLD_UNIT}")
        meta = phase.snapshot[f"file.{k}"].content
        assert meta.strip() == f"link /etc/shoal-rbfiles/../..//etc/systemd/system/{OLD_UNIT}"
    finally:
        # Put the host back for the other tests, by hand (this test is not about undo).
        await lab.exec(HOST, ["sh", "-c", f"cat >{KEPT}; chmod 0640 {KEPT}"], input=KEPT_BYTES)
        await lab.exec(HOST, ["rm", "-f", f"{WANTS_DIR}/{NEW_UNIT}"])
        await lab.exec(HOST, ["ln", "-s", f"/etc/shoal-rbfiles/../../{UNITS}/{OLD_UNIT}",
                              f"{WANTS_DIR}/{OLD_UNIT}"])  # fmt: skip
    assert await _files(lab) == before


async def test_old_backups_are_pruned_at_the_start_of_a_phase(files_lab: Lab) -> None:
    lab = files_lab
    # 14 older plans (oldest first), one of them with an armed lock-out timer that never
    # restored: that one must survive whatever its age.
    old = [f"old{i:02d}" for i in range(14)]
    busy = old[0]
    script = [f"rm -rf {BACKUP_ROOT}; mkdir -p {BACKUP_ROOT}"]
    for i, name in enumerate(old):
        d = f"{BACKUP_ROOT}/{name}/20-real_servers_prepare"
        script.append(f"mkdir -p {d} && echo x >{d}/phase.log && "
                      f"touch -d '@{1_700_000_000 + i * 60}' {d} {BACKUP_ROOT}/{name}")  # fmt: skip
    script.append(f"echo process >{BACKUP_ROOT}/{busy}/20-real_servers_prepare/lockout.mode")
    # Not a plan id: not ours, never removed.
    script.append(
        f"mkdir -p '{BACKUP_ROOT}/not ours' && touch -d @1600000000 '{BACKUP_ROOT}/not ours'"
    )
    await lab.exec(HOST, ["sh", "-c", "\n".join(script)])
    await install_hooks(lab, HOST, 1)
    desired = desired_for(lab, command_timeout=10)
    plan = make_plan({HOST: [step(HOST, 0, "file", [], [], phase=Phase.EXTRA)]})
    async with transport_for(lab, desired) as t:
        result = await apply_plan(plan, desired, t)
    assert result.ok, _explain(result)
    listing = await lab.exec(HOST, ["ls", "-1", BACKUP_ROOT])
    left = set(listing.stdout.splitlines())
    # This plan and the KEEP_BACKUPS - 1 newest others, the busy one, and the foreign one.
    newest = old[-(KEEP_BACKUPS - 1) :]
    assert left == {plan.id, *newest, busy, "not ours"}
    await lab.exec(HOST, ["rm", "-rf", BACKUP_ROOT])
