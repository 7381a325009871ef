"""Property tests for the per-field validators: names, interface names, addresses."""

from __future__ import annotations

import ipaddress
import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.desired.models import (
    Cluster,
    Host,
    RealServer,
    Service,
    is_valid_interface_name,
    is_valid_name,
)

NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}", fullmatch=True)
ANY_TEXT = st.text(max_size=80)
# Text biased towards the characters a shell treats specially, plus what names may contain.
SHELLISH = st.text(
    alphabet=st.sampled_from("aZ09_.-/ \t\n;&|$`'\"\\!*?()<>{}[]~#%=:,@+"), max_size=20
)


@given(st.one_of(ANY_TEXT, SHELLISH, NAMES))
def test_an_accepted_name_never_needs_quoting(value: str) -> None:
    if is_valid_name(value):
        assert shlex.quote(value) == value
        assert not value.startswith("-")  # would read as an option
        assert value.isascii()
        assert 1 <= len(value) <= 63


@given(NAMES)
def test_every_name_of_the_documented_form_is_accepted(value: str) -> None:
    assert is_valid_name(value)
    assert Host(name=value, address="10.0.0.1").name == value


@given(st.one_of(ANY_TEXT, SHELLISH))
def test_host_model_refuses_what_the_name_check_refuses(value: str) -> None:
    try:
        host = Host(name=value, address="10.0.0.1")
    except ValidationError as exc:
        assert not is_valid_name(value)
        assert "https://" not in str(exc.errors()[0]["msg"])
    else:
        assert shlex.quote(host.name) == host.name


@given(
    st.one_of(
        ANY_TEXT, SHELLISH, st.from_regex(r"[a-z]{1,4}[0-9]{0,3}(\.[0-9]{1,4})?", fullmatch=True)
    )
)
def test_an_accepted_interface_name_is_one_the_kernel_takes(value: str) -> None:
    if is_valid_interface_name(value):
        # The kernel's rule (dev_valid_name): 1..15 bytes, not "." or "..", no '/', ':' or space.
        assert 1 <= len(value.encode()) <= 15
        assert value not in (".", "..")
        assert not any(c in value for c in "/: \t\n")
        assert shlex.quote(value) == value
        assert not value.startswith("-")


@pytest.mark.parametrize("value", ["eth0", "ens3", "br-lab", "veth1.100", "lo", "bond0"])
def test_common_interface_names(value: str) -> None:
    assert is_valid_interface_name(value)


@pytest.mark.parametrize("value", ["eth0:1", "a" * 16, "-x", ".", "..", "eth 0", "eth0\n", ""])
def test_bad_interface_names(value: str) -> None:
    assert not is_valid_interface_name(value)


@given(st.ip_addresses(v=4))
def test_addresses_accepted_exactly_when_usable(addr: ipaddress.IPv4Address) -> None:
    usable = not (addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_reserved)
    try:
        host = Host(name="h", address=str(addr))
    except ValidationError:
        assert not usable
    else:
        assert usable
        assert host.address == str(addr)


@given(st.one_of(ANY_TEXT, SHELLISH))
def test_an_accepted_address_is_a_dotted_quad(value: str) -> None:
    try:
        host = Host(name="h", address=value)
    except ValidationError:
        return
    assert str(ipaddress.IPv4Address(host.address)) == host.address == value
    assert shlex.quote(host.address) == host.address


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_ports_and_weights_in_range(n: int) -> None:
    try:
        Service(name="s", vip="10.0.0.100", port=n)
    except ValidationError:
        assert not 1 <= n <= 65535
    else:
        assert 1 <= n <= 65535
    try:
        RealServer(host="h", weight=n)
    except ValidationError:
        assert not 0 <= n <= 65535
    else:
        assert 0 <= n <= 65535


def test_models_accept_python_sequences() -> None:
    # Other modules build models in code with lists; strict mode must not refuse them.
    cluster = Cluster.model_validate(
        {
            "cluster": {"name": "c", "directors": ["d1"]},
            "service": [
                {"name": "s", "vip": "10.0.0.1", "port": 1, "real_server": [{"host": "r"}]}
            ],
        }
    )
    assert cluster.services[0].real_servers[0].host == "r"
    assert cluster.cluster.primary == "d1" and cluster.cluster.backup is None


def test_strict_types_refuse_coercion() -> None:
    with pytest.raises(ValidationError):
        Service.model_validate({"name": "s", "vip": "10.0.0.1", "port": "80"})
    with pytest.raises(ValidationError):
        RealServer.model_validate({"host": "h", "weight": True})
