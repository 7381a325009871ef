"""The git source against a real bare repository and real pushes (git CLI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.server.source import GitSource, redact_url


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    bare = tmp_path / "remote.git"
    work = tmp_path / "work"
    git("init", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    git("init", "-b", "main", str(work), cwd=tmp_path)
    git("config", "user.email", "t@example.invalid", cwd=work)
    git("config", "user.name", "t", cwd=work)
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


def commit_and_push(work: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


async def test_fetch_follows_pushes_and_checks_out(
    remote: tuple[Path, Path], tmp_path: Path
) -> None:
    bare, work = remote
    first = commit_and_push(work, {"shoal.toml": "a = 1\n", "clusters/web.toml": "x\n"}, "one")
    source = GitSource(str(bare), tmp_path / "state")
    assert await source.fetch() == first
    second = commit_and_push(work, {"shoal.toml": "a = 2\n"}, "two")
    assert await source.head() == first  # no fetch, no change
    assert await source.fetch() == second
    async with source.checkout(first) as tree:
        assert (tree / "shoal.toml").read_text() == "a = 1\n"
        assert (tree / "clusters" / "web.toml").read_text() == "x\n"
        kept = tree
    assert not kept.exists()
    async with source.checkout(second) as tree:
        assert (tree / "shoal.toml").read_text() == "a = 2\n"
    # A restarted server reuses its mirror.
    again = GitSource(str(bare), tmp_path / "state")
    assert await again.head() == second
    # Each Repo keeps `git cat-file` helpers running until closed.
    source.close()
    again.close()


async def test_errors_are_source_errors(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = remote
    source = GitSource(str(bare), tmp_path / "state")
    with pytest.raises(SourceError, match="cannot fetch branch main"):
        await source.fetch()  # the branch has no commit yet
    missing = GitSource(str(tmp_path / "nope.git"), tmp_path / "state2")
    with pytest.raises(SourceError):
        await missing.fetch()
    with pytest.raises(SourceError, match="full commit sha"):
        async with source.checkout("HEAD; rm -rf /"):
            pass
    with pytest.raises(ValueError):
        GitSource(str(bare), tmp_path / "s", branch="--upload-pack=x")
    source.close()
    missing.close()


def test_redact_url() -> None:
    assert redact_url("https://user:tok@git.example/x.git") == "https://***@git.example/x.git"
    assert redact_url("/srv/git/x.git") == "/srv/git/x.git"
