"""Fixtures of the lab tests that several modules share (the session lab is in tests/conftest.py).

`vm_dr_lab`: a lab with two VM directors (real IPVS), booted once per session, only when a test
asks for it (tests/lab/ipvs_vm_support.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from tests.conftest import SESSION_TOKEN
from tests.lab.ipvs_vm_support import PORT, VmDrLab, require_vm


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vm_dr_lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[VmDrLab]:
    require_vm()
    started = time.monotonic()
    topology = Topology.default(director_kind="vm")
    async with Lab.up(f"i{SESSION_TOKEN}", topology, ephemeral=True) as lab:
        booted = time.monotonic() - started
        print(f"\nlab with VM directors lvs1, lvs2 up in {booted:.1f} s")
        await start_services(lab, [PORT])
        try:
            yield VmDrLab(lab, tmp_path_factory.mktemp("ipvs-vm"), booted)
        finally:
            await stop_services(lab)
            print(f"\nIPVS VM director tests: {time.monotonic() - started:.1f} s in all")
