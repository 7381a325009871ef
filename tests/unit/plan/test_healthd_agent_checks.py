"""shoal-healthd's udp-side checks against real sockets on loopback (no lab needed)."""

from __future__ import annotations

import socket

from reconciler.plan.healthd_agent import run_check

CHECK = {"type": "tcp", "timeout": 0.3}


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_udp_service_with_the_default_check_is_down_only_on_an_icmp_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert run_check("127.0.0.1", port, CHECK, "udp") is None  # silence is up
    why = run_check("127.0.0.1", _closed_udp_port(), CHECK, "udp")
    assert why is not None and "ConnectionRefusedError" in why


def test_a_udp_check_wants_its_reply() -> None:
    check = {"type": "udp", "timeout": 0.3, "send": "70696e67", "receive": "706f6e67"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert run_check("127.0.0.1", port, check) == "no reply"
