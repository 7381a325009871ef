"""`[login]` in shoal.toml and the login keys of inventory.toml: defaults, overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.desired.loader import load_tree, read_tree
from reconciler.errors import DesiredStateInvalid

EXAMPLE = Path(__file__).resolve().parents[3] / "fixtures" / "config-repo"


def files_with(shoal: str = "", host_keys: dict[str, str] | None = None) -> dict[str, bytes]:
    files = read_tree(EXAMPLE)
    files["shoal.toml"] = files["shoal.toml"] + shoal.encode()
    inventory = files["inventory.toml"].decode()
    for host, keys in (host_keys or {}).items():
        inventory = inventory.replace(f"[hosts.{host}]\n", f"[hosts.{host}]\n{keys}\n")
    files["inventory.toml"] = inventory.encode()
    return files


def test_without_login_settings_every_host_logs_in_as_root_as_is() -> None:
    hosts = load_tree(read_tree(EXAMPLE)).inventory.hosts
    assert {(h.user, h.become, h.become_user) for h in hosts.values()} == {("root", "none", "root")}


def test_login_defaults_apply_where_the_host_says_nothing() -> None:
    files = files_with(
        '\n[login]\nuser = "deploy"\nbecome = "sudo"\n',
        {"web1": 'user = "ops"', "web2": 'become = "none"\nuser = "root"'},
    )
    hosts = load_tree(files).inventory.hosts
    assert (hosts["lvs1"].user, hosts["lvs1"].become, hosts["lvs1"].become_user) == (
        "deploy", "sudo", "root",
    )  # fmt: skip
    assert (hosts["web1"].user, hosts["web1"].become) == ("ops", "sudo")
    assert (hosts["web2"].user, hosts["web2"].become) == ("root", "none")


def test_bad_login_values_are_named_with_their_place() -> None:
    files = files_with('\n[login]\nbecome = "su"\n', {"web1": 'become_user = "a b"'})
    with pytest.raises(DesiredStateInvalid) as info:
        load_tree(files)
    text = [str(i) for i in info.value.issues]
    assert any(t.startswith("shoal.toml:") and "login > become" in t for t in text), text
    assert any(t.startswith("inventory.toml:") and "become_user" in t for t in text), text


def test_a_password_key_is_refused_in_the_repository() -> None:
    files = files_with('\n[login]\nbecome = "sudo"\nbecome_password = "hunter2"\n')
    with pytest.raises(DesiredStateInvalid) as info:
        load_tree(files)
    (issue,) = info.value.issues
    assert issue.file == "shoal.toml" and "become_password" in str(issue)
    assert "hunter2" not in str(issue)
