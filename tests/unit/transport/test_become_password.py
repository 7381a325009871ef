"""Where the sudo password comes from: a private file or a variable no child inherits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.transport.become_password import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    BecomePasswordError,
    load_become_password,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "sudo-password"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_none_given_is_none() -> None:
    assert load_become_password(None) is None


def test_a_file_loses_one_trailing_newline_and_keeps_spaces(tmp_path: Path) -> None:
    password = load_become_password(secret_file(tmp_path, " two words \n"))
    assert password is not None
    assert password.get_secret_value() == " two words "
    assert "two words" not in repr(password) and "two words" not in str(password)


def test_the_file_may_be_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(secret_file(tmp_path, "s3cret")))
    password = load_become_password(None)
    assert password is not None and password.get_secret_value() == "s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, "s3cret", mode)
    with pytest.raises(BecomePasswordError) as info:
        load_become_password(path)
    assert str(info.value) == (
        f"{path}: mode {mode:04o} lets others read the sudo password; chmod 600 {path}"
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "is empty"), ("\n", "is empty"), ("one\ntwo\n", "must be one line")],
)
def test_unusable_contents_are_named(tmp_path: Path, text: str, why: str) -> None:
    path = secret_file(tmp_path, text)
    with pytest.raises(BecomePasswordError, match=why) as info:
        load_become_password(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BecomePasswordError) as info:
        load_become_password(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: cannot read the sudo password: " + (
        "No such file or directory"
    )


def test_the_variable_is_taken_out_of_the_environment_before_any_child_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "env-s3cret")
    password = load_become_password(None)
    assert password is not None and password.get_secret_value() == "env-s3cret"
    child = subprocess.run(["env"], capture_output=True, text=True, check=True)
    assert "env-s3cret" not in child.stdout


def test_a_file_wins_and_the_variable_still_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "env-s3cret")
    password = load_become_password(secret_file(tmp_path, "file-s3cret"))
    assert password is not None and password.get_secret_value() == "file-s3cret"
    child = subprocess.run(["env"], capture_output=True, text=True, check=True)
    assert "env-s3cret" not in child.stdout
