"""The config repository as the server sees it: a bare mirror in the state directory.

This module is the only one that imports GitPython. It clones the repository once, fetches the
watched branch, reads the branch head, and exports one revision's tree into a temporary
directory for the loader. Every GitPython call runs in a worker thread (one at a time: a
`git.Repo` object is not thread-safe), so the event loop never waits on git.

It does not parse the tree (that is `reconciler.desired.loader`)
and never trusts a webhook's idea of
the head: the head is whatever `fetch()` reads from the remote.

`Source` is what the controller needs of it (fetch the head, check a revision out, close), so
that its unit tests can hand it revisions without git.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import git

from reconciler.errors import SourceError

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


def redact_url(text: str) -> str:
    """Drop credentials from URLs in git's messages (https://user:secret@host/...)."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What a person recognises a revision by: its subject line, author and date."""

    sha: str
    subject: str
    author: str
    at: str


class Source(Protocol):
    async def fetch(self) -> str:
        """The branch head's commit sha, read from the remote now; raises SourceError."""
        ...

    def checkout(self, sha: str) -> AbstractAsyncContextManager[Path]:
        """A directory holding revision `sha`'s tree while the block runs."""
        ...

    async def describe(self, sha: str) -> CommitInfo | None:
        """The commit's subject, author and date, from what was fetched; None if unknown."""
        ...

    def close(self) -> None: ...


class GitSource:
    """A watched branch of one repository, mirrored under `state_dir/source.git`."""

    def __init__(self, url: str, state_dir: Path, branch: str = "main") -> None:
        if not _BRANCH_RE.match(branch) or branch.startswith("-") or ".." in branch:
            raise ValueError(f"{branch!r} is not a branch name")
        self.url = url
        self.branch = branch
        self.mirror_path = state_dir / "source.git"
        self.work_root = state_dir / "work"
        self._repo: git.Repo | None = None
        self._git_lock = threading.Lock()
        self._described: dict[str, CommitInfo] = {}

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def close(self) -> None:
        """Stop the git helper processes the mirror's Repo keeps (`git cat-file --batch`);
        the next use opens it again."""
        with self._git_lock:
            if self._repo is not None:
                self._repo.close()
                self._repo = None

    # --- synchronous (worker thread) ----------------------------------------------------------

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        try:
            if (self.mirror_path / "HEAD").exists():
                repo = git.Repo(self.mirror_path)
            else:
                self.mirror_path.parent.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.init(self.mirror_path, bare=True)
                repo.create_remote("origin", self.url)
            # The URL may change between server starts (--repo); the mirror follows it.
            if repo.remotes.origin.url != self.url:
                repo.remotes.origin.set_url(self.url)
        except (git.GitError, OSError) as exc:
            raise SourceError(
                f"cannot open mirror of {self.display_url}: {redact_url(str(exc))}"
            ) from exc
        self._repo = repo
        return repo

    def fetch_sync(self) -> str:
        """Fetch the branch from the remote and return its head commit sha."""
        with self._git_lock:
            repo = self._open()
            ref = f"refs/remotes/origin/{self.branch}"
            try:
                repo.remotes.origin.fetch(refspec=f"+refs/heads/{self.branch}:{ref}", prune=False)
                return str(repo.commit(ref).hexsha)
            except (git.GitError, ValueError, OSError) as exc:
                raise SourceError(
                    f"cannot fetch branch {self.branch} of {self.display_url}: "
                    f"{redact_url(str(exc)).strip()}"
                ) from exc

    def head_sync(self) -> str | None:
        """The last fetched head, without contacting the remote."""
        with self._git_lock:
            repo = self._open()
            try:
                return str(repo.commit(f"refs/remotes/origin/{self.branch}").hexsha)
            except (git.GitError, ValueError):
                return None

    def describe_sync(self, sha: str) -> CommitInfo | None:
        if not _SHA_RE.match(sha):
            return None
        known = self._described.get(sha)
        if known is not None:
            return known
        with self._git_lock:
            repo = self._open()
            try:
                commit = repo.commit(sha)
                message = commit.message
                text = message.decode(errors="replace") if isinstance(message, bytes) else message
                info = CommitInfo(
                    sha=sha,
                    subject=(text.strip().splitlines() or [""])[0],
                    author=str(commit.author.name or commit.author.email or ""),
                    at=commit.committed_datetime.isoformat(),
                )
            except (git.GitError, ValueError, OSError):
                return None
        # Commits never change: remembered for as long as the process runs (bounded).
        if len(self._described) >= 512:
            self._described.clear()
        self._described[sha] = info
        return info

    def export_sync(self, sha: str, dest: Path) -> None:
        """Write the tree of commit `sha` into `dest` (which must exist and be empty)."""
        if not _SHA_RE.match(sha):
            raise SourceError(f"{sha!r} is not a full commit sha")
        with self._git_lock:
            repo = self._open()
            buf = io.BytesIO()
            try:
                repo.archive(buf, treeish=sha, format="tar")
            except (git.GitError, ValueError) as exc:
                raise SourceError(
                    f"cannot read revision {sha[:12]}: {redact_url(str(exc))}"
                ) from exc
        buf.seek(0)
        with tarfile.open(fileobj=buf, mode="r:") as tar:
            # "data" refuses absolute paths, links out of the tree and device files.
            tar.extractall(dest, filter="data")

    # --- async API -----------------------------------------------------------------------------

    async def fetch(self) -> str:
        return await asyncio.to_thread(self.fetch_sync)

    async def head(self) -> str | None:
        return await asyncio.to_thread(self.head_sync)

    async def describe(self, sha: str) -> CommitInfo | None:
        return await asyncio.to_thread(self.describe_sync, sha)

    @asynccontextmanager
    async def checkout(self, sha: str) -> AsyncIterator[Path]:
        """A temporary directory holding revision `sha`; removed when the block ends."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{sha[:12]}-", dir=self.work_root))
        try:
            await asyncio.to_thread(self.export_sync, sha, tmp)
            yield tmp
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
