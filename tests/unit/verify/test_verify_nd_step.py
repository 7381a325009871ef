"""The Neighbour Discovery step over a FakeTransport: the probe shipped to the client, the
ndisc6 fallback where the login has no packet socket, and a probe that could not run."""

from __future__ import annotations

import json

import pytest

from reconciler.desired.models import Desired, Settings, VerifySettings
from reconciler.transport.fake import Call, FakeTransport, Reply
from reconciler.verify.arp import ArpNotAsked
from reconciler.verify.nd import nd_responders
from reconciler.verify.probe_nd import NOT_PERMITTED, nd_probe_source
from reconciler.verify.session import Session
from tests.statecases import cluster_desired

VIP6 = "fd77:77:77::100"
LVS1, WEB2 = "02:73:6c:00:00:0b", "02:73:6c:00:00:16"


def _session(transport: FakeTransport) -> Session:
    desired: Desired = cluster_desired(director="ipvsadm")
    settings = Settings(verify=VerifySettings(clients=("client1",)))
    return Session(desired.model_copy(update={"settings": settings}), transport, None, None)


async def test_the_probe_runs_on_the_client_and_its_responders_come_back_in_order() -> None:
    def client(call: Call) -> Reply:
        assert call.argv[:2] == ("python3", "-") and call.script == nd_probe_source()
        assert call.argv[call.argv.index("--vip") + 1] == VIP6
        return Reply(0, json.dumps({"source": "fd77:77:77::31", "sent": 5,
                                    "responders": [[LVS1.upper(), 5], [WEB2, 1]]}))  # fmt: skip

    transport = FakeTransport(hosts={"client1": client})
    assert await nd_responders(_session(transport), "client1", VIP6) == [LVS1, WEB2]


@pytest.mark.parametrize(
    ("rc", "out", "expected"),
    [
        (0, "Target link-layer address: 02:73:6C:00:00:0B\n from fd77:77:77::100\n", [LVS1]),
        (2, "Soliciting fd77:77:77::100 (fd77:77:77::100) on eth0...\nNo response.\n", []),
    ],
)
async def test_without_a_packet_socket_ndisc6_asks(rc: int, out: str, expected: list[str]) -> None:
    def client(call: Call) -> Reply:
        if call.argv[0] == "python3":
            return Reply(NOT_PERMITTED, "", "no packet socket here")
        assert call.argv[:2] == ("ndisc6", "-m") and call.argv[-2:] == (VIP6, "eth0")
        return Reply(rc, out)

    transport = FakeTransport(hosts={"client1": client})
    assert await nd_responders(_session(transport), "client1", VIP6) == expected


async def test_a_probe_that_could_not_run_says_so() -> None:
    transport = FakeTransport(hosts={"client1": lambda call: Reply(1, "", "Traceback: boom")})
    with pytest.raises(ArpNotAsked, match="Neighbour Discovery probe for fd77:77:77::100 failed"):
        await nd_responders(_session(transport), "client1", VIP6)
