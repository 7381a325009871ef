"""`python -m bench` arguments: the tool list (shoal-sudo in the default rotation), lab ids."""

from __future__ import annotations

import pytest

from bench.__main__ import parse_args
from bench.labrun import TOOLS
from lab.naming import check_lab_id


def test_the_default_tools_measure_shoal_through_sudo_beside_shoal() -> None:
    args = parse_args([])
    assert args.tools == ["shoal", "shoal-sudo", "ansible", "pyinfra"] == list(TOOLS)
    assert parse_args(["--tools", "shoal, shoal-sudo"]).tools == ["shoal", "shoal-sudo"]


@pytest.mark.parametrize("bad", ["shoal,sudo", "", "floor"])
def test_unknown_tools_are_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--tools", bad])
    assert "choose from shoal,shoal-sudo,ansible,pyinfra" in capsys.readouterr().err


def test_the_lab_prefix_makes_valid_lab_ids_at_every_size() -> None:
    assert parse_args([]).lab_prefix == "bench"
    prefix = parse_args(["--lab-prefix", "hbb"]).lab_prefix
    assert check_lab_id(f"{prefix}100") == "hbb100"
    for bad in ("toolong", "HB", "h-b"):
        with pytest.raises(SystemExit):
            parse_args(["--lab-prefix", bad])
