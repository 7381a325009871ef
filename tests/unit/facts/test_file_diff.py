"""Managed files' content in the facts and the plan's diff of it.

The facts script's `content` lines (parser, and the real script under sh), the "before" side of
file.managed and keepalived.config, the unified diff (`reconciler.plan.stepdiff`) and how
`shoal plan` and the HTTP API show it.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import io
import json
import random
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from api.schemas import host_diff
from reconciler.cli.common import print_lines
from reconciler.cli.plan import file_diffs, render_step, run_plan
from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import FILE_CONTENT_MAX, Fact, FileInfo, HostFacts, KeepalivedInfo
from reconciler.facts.parse import parse_facts_output
from reconciler.facts.parsers.stat import parse_file_lines
from reconciler.facts.script import build_facts_script
from reconciler.plan.stepdiff import NO_NEWLINE, file_diff, unified_diff
from reconciler.plan.steps import Change, FileWrite, LowState, Phase, Step
from states.base import PlanContext
from states.file import FileArgs, managed_result
from states.keepalived import CONF_PATH, CONFIG, sha256_text
from tests.statecases import cluster_desired, fresh_facts
from tests.support.gathers import EXAMPLE, fresh
from tests.support.plans import make_plan
from tests.unit.facts.support import PlanApi

# Content a naive transport would break: a line that looks like the script's own end marker,
# shell syntax, a backslash, UTF-8, a carriage return, a tab and no final newline.
SPECIAL = (
    'a\tb\n#shoal-facts# end files 0\n#shoal-facts# done\n$(reboot) `id` "q" \\n é\r\n'
    "last line without a newline"
)
KEEPALIVED = "".join(f"line {i}\n" for i in range(1, 56))


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def section(*files: tuple[str, bytes | str, str]) -> str:
    """A files section as the script prints it; files are (path, content, "send" | "big")."""
    stats, shas, contents = [], [], []
    for path, data, how in files:
        raw = data.encode() if isinstance(data, str) else data
        size = len(raw) if how != "big" else FILE_CONTENT_MAX + 1
        stats.append(f"stat 644 {size} regular file|{path}")
        shas.append(f"{sha(raw)}  {path}")
        if how != "big":
            contents.append(f"content {path} {b64(raw)}")
    return "\n".join(["missing /etc/none", *stats, *shas, *contents]) + "\n"


# --- facts: the parser ----------------------------------------------------------------------------


def test_parser_content_special_binary_oversize_and_empty() -> None:
    files = parse_file_lines(
        section(
            ("/etc/special.conf", SPECIAL, "send"),
            ("/etc/bin.dat", b"\x7fELF\x00\x01", "send"),
            ("/etc/latin1.conf", "caf\xe9\n".encode("latin-1"), "send"),
            ("/etc/big.conf", "x" * 10, "big"),
            ("/etc/empty", b"", "send"),
        )
    )
    assert files["/etc/special.conf"].content == SPECIAL
    assert files["/etc/special.conf"].content_unknown_reason is None
    assert files["/etc/bin.dat"].content is None
    assert files["/etc/bin.dat"].content_unknown_reason == "binary (NUL bytes)"
    assert files["/etc/latin1.conf"].content_unknown_reason == "not UTF-8 text"
    assert files["/etc/big.conf"].content is None
    assert files["/etc/big.conf"].content_unknown_reason == "larger than 64 KiB"
    assert files["/etc/big.conf"].sha256 == sha("x" * 10)  # the digest is still there
    assert files["/etc/empty"].content == ""
    assert not files["/etc/none"].exists and files["/etc/none"].content_unknown_reason is None


def test_parser_content_must_match_the_digest_and_the_limit() -> None:
    # The file changed between sha256sum and base64: the content is not what the digest says.
    text = f"stat 644 4 regular file|/etc/a\n{sha('old!')}  /etc/a\ncontent /etc/a {b64('new!')}\n"
    info = parse_file_lines(text)["/etc/a"]
    assert info.content is None and "does not match its sha256" in str(info.content_unknown_reason)
    # It grew past the limit after stat: head sent limit + 1 bytes, which are not kept.
    grown = "y" * (FILE_CONTENT_MAX + 1)
    text = f"stat 644 9 regular file|/etc/g\n{sha(grown)}  /etc/g\ncontent /etc/g {b64(grown)}\n"
    assert parse_file_lines(text)["/etc/g"].content_unknown_reason == "larger than 64 KiB"


def test_parser_links_directories_older_scripts_and_bad_lines() -> None:
    text = (
        "stat 777 11 symbolic link|/etc/link\nstat 755 4096 directory|/etc/d\n"
        f"{sha('t')}  /etc/link\n"
    )
    files = parse_file_lines(text)
    assert files["/etc/link"].content_unknown_reason == "a symbolic link"
    assert files["/etc/d"].content_unknown_reason == "not a regular file (directory)"
    # An older script printed no sizes and no content: still parsed, and says so.
    old = parse_file_lines(f"stat 644 regular file|/etc/o\n{sha('o')}  /etc/o\n")["/etc/o"]
    assert old.exists and old.sha256 == sha("o") and old.content is None
    assert old.content_unknown_reason == "content not gathered (older script)"
    with pytest.raises(FactParseError, match="bad base64"):
        parse_file_lines(f"stat 644 1 regular file|/etc/x\n{sha('x')}  /etc/x\ncontent /etc/x a\n")
    with pytest.raises(FactParseError, match="without a stat line"):
        parse_file_lines(f"content /etc/y {b64('y')}\n")


def test_the_real_script_sends_content_through_its_sections(tmp_path: Path) -> None:
    """The script under sh on this machine: what it gathers is byte for byte the files."""
    special = tmp_path / "special.conf"
    special.write_bytes(SPECIAL.encode())
    binary = tmp_path / "bin.dat"
    binary.write_bytes(b"a\x00b")
    big = tmp_path / "big.conf"
    big.write_bytes(b"z" * (FILE_CONTENT_MAX + 1))
    exact = tmp_path / "exact.conf"
    exact.write_bytes(b"e" * FILE_CONTENT_MAX)
    link = tmp_path / "link"
    link.symlink_to(special)
    paths = [str(p) for p in (special, binary, big, exact, link)]
    for shell in ("sh", "dash", "bash"):
        try:
            out = subprocess.run(
                [shell, "-s"], input=build_facts_script(paths), capture_output=True, text=True,
                check=True, timeout=60,
            ).stdout  # fmt: skip
        except FileNotFoundError:
            continue
        facts = parse_facts_output("here", out)
        assert facts.files.value is not None, facts.files.unknown_reason
        files = facts.files.value
        assert files[str(special)].content == SPECIAL, shell
        assert files[str(binary)].content_unknown_reason == "binary (NUL bytes)"
        assert files[str(big)].content_unknown_reason == "larger than 64 KiB"
        assert files[str(exact)].content == "e" * FILE_CONTENT_MAX
        assert files[str(link)].content_unknown_reason == "a symbolic link"
        assert files[str(link)].sha256 == files[str(special)].sha256
        # Every other section still parses around the content.
        assert facts.tools.known and facts.ledger.known, shell


def test_content_is_part_of_the_facts_digest() -> None:
    def facts(content: str) -> HostFacts:
        info = FileInfo(path="/etc/a", exists=True, sha256=sha(content), mode="0644",
                        kind="regular file", content=content)  # fmt: skip
        return fresh_facts("web1").model_copy(update={"files": Fact.of({"/etc/a": info})})

    assert facts("a=1\n").digest() != facts("a=2\n").digest()
    assert facts("a=1\n").digest() == facts("a=1\n").digest()


# --- states: the before side ----------------------------------------------------------------------


def _low(function: str, host: str, **args: object) -> LowState:
    return LowState(id="conf", function=function, host=host, args=args, phase=Phase.EXTRA)


def _info(
    content: str, mode: str = "0644", *, known: str | None = None, why: str | None = None
) -> FileInfo:
    """/etc/app.conf holding `content`; the facts carry it as `known` (None: they do not)."""
    return FileInfo(path="/etc/app.conf", exists=True, sha256=sha(content), mode=mode,
                    kind="regular file", content=known, content_unknown_reason=why)  # fmt: skip


def test_file_managed_before_is_the_content_and_the_mode_stays_visible() -> None:
    low = _low("file.managed", "web1", path="/etc/app.conf", content="a\nb=2\nc\n")
    args = FileArgs(path="/etc/app.conf", content="a\nb=2\nc\n", mode="0644")
    (step,) = managed_result(low, args, _info("a\nb=1\nc\n", known="a\nb=1\nc\n"),
                             claim=True).steps  # fmt: skip
    assert step.change == Change(before="a\nb=1\nc\n", after="a\nb=2\nc\n")
    assert step.description == "update /etc/app.conf (mode 0644)"
    assert file_diff(step) == [
        "--- /etc/app.conf (on web1)",
        "+++ /etc/app.conf (planned, mode 0644)",
        "@@ -1,3 +1,3 @@", " a", "-b=1", "+b=2", " c",
    ]  # fmt: skip
    # The mode changes too: the description says from what.
    (step,) = managed_result(low, args, _info("old\n", mode="0600", known="old\n"),
                             claim=True).steps  # fmt: skip
    assert step.description == "update /etc/app.conf (mode 0600 -> 0644)"
    # A new file has no before, and says so in the diff's header.
    missing = FileInfo(path="/etc/app.conf", exists=False)
    (step,) = managed_result(low, args, missing, claim=True).steps
    assert step.change.before is None
    assert file_diff(step)[:3] == [  # type: ignore[index]
        "--- /etc/app.conf (absent on web1)", "+++ /etc/app.conf (planned, mode 0644)",
        "@@ -0,0 +1,3 @@",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "shown"),
    [("larger than 64 KiB", "larger than 64 KiB"), ("binary (NUL bytes)", "binary (NUL bytes)"),
     (None, "content not gathered")],
)  # fmt: skip
def test_file_managed_without_content_falls_back_to_the_digest(
    reason: str | None, shown: str
) -> None:
    low = _low("file.managed", "web1", path="/etc/app.conf", content="new\n")
    args = FileArgs(path="/etc/app.conf", content="new\n", mode="0644")
    info = _info("old\n", why=reason)
    (step,) = managed_result(low, args, info, claim=True).steps
    digest = sha("old\n")[:12]
    assert step.change.before == f"(sha256 {digest}, mode 0644; content not shown: {shown})"
    diff = file_diff(step)
    assert diff is not None and f"-{step.change.before}" in diff and "+new" in diff


def _keepalived_facts(conf: str | None, *, content: bool = True) -> HostFacts:
    files = {}
    if conf is not None:
        files[CONF_PATH] = FileInfo(
            path=CONF_PATH, exists=True, sha256=sha256_text(conf), mode="0644",
            kind="regular file", content=conf if content else None,
            content_unknown_reason=None if content else "larger than 64 KiB",
        )  # fmt: skip
    ka = KeepalivedInfo(installed=True, running=True,
                        config_sha256=sha256_text(conf) if conf is not None else None)  # fmt: skip
    return fresh_facts("lvs1").model_copy(
        update={"files": Fact.of(files), "keepalived": Fact.of(ka)}
    )


def _keepalived_steps(conf: str | None, new: str, **kw: object) -> dict[str, Step]:
    low = _low("keepalived.config", "lvs1", path=CONF_PATH, content=new, **kw)
    ctx = PlanContext(desired=cluster_desired(), facts={"lvs1": _keepalived_facts(conf)})
    return {s.id.removeprefix("lvs1/conf/"): s for s in CONFIG.run(low, ctx).steps}


def test_keepalived_before_is_the_installed_file_and_the_diff_one_line() -> None:
    new = KEEPALIVED.replace("line 30\n", "line 30\nreal_server 10.77.0.24 80\n")
    install = _keepalived_steps(KEEPALIVED, new)["final/install"]
    assert install.change == Change(before=KEEPALIVED, after=new)
    diff = file_diff(install)
    assert diff is not None
    assert diff[:2] == [f"--- {CONF_PATH} (on lvs1)", f"+++ {CONF_PATH} (planned)"]
    assert [line for line in diff[2:] if line[:1] in "+-"] == ["+real_server 10.77.0.24 80"]


def test_keepalived_without_content_falls_back_and_drain_diffs_from_the_drain() -> None:
    # Content not carried (too large): the digest, and why.
    low = _low("keepalived.config", "lvs1", path=CONF_PATH, content="new\n")
    ctx = PlanContext(desired=cluster_desired(),
                      facts={"lvs1": _keepalived_facts(KEEPALIVED, content=False)})  # fmt: skip
    (install,) = [s for s in CONFIG.run(low, ctx).steps if s.id.endswith("/install")]
    assert install.change.before == (
        f"sha256 {sha256_text(KEEPALIVED)} (content not shown: larger than 64 KiB)"
    )
    # A drain: the original -> the drain config -> the final file, each diffed from the last.
    drain = KEEPALIVED.replace("line 7\n", "weight 0\n")
    final = KEEPALIVED.replace("line 7\n", "")
    steps = _keepalived_steps(KEEPALIVED, final, drain_content=drain, drains=[])
    assert steps["drain/install"].change == Change(before=KEEPALIVED, after=drain)
    assert steps["final/install"].change == Change(before=drain, after=final)
    changed = [ln for ln in file_diff(steps["final/install"]) or [] if ln[:1] in "+-"][2:]
    assert changed == ["-weight 0"]
    # A new file: no before.
    assert _keepalived_steps(None, "x\n")["final/install"].change.before is None


# --- the diff and how it is shown -----------------------------------------------------------------


def test_unified_diff_is_difflibs_and_marks_a_missing_final_newline() -> None:
    rng = random.Random(7)
    for _ in range(200):
        a = [rng.choice("abcde") + "\n" for _ in range(rng.randint(0, 25))]
        b = list(a)
        for _ in range(rng.randint(0, 4)):
            b.insert(rng.randint(0, len(b)), rng.choice("xyz") + "\n")
            if b and rng.random() < 0.5:
                del b[rng.randrange(len(b))]
        want = [ln.rstrip("\n") for ln in difflib.unified_diff(a, b, "A", "B")]
        assert unified_diff("".join(a), "".join(b), "A", "B") == want
    assert unified_diff("a\nb", "a\nb\n", "A", "B")[2:] == [
        "@@ -1,2 +1,2 @@", " a", "-b", NO_NEWLINE, "+b",
    ]  # fmt: skip
    assert unified_diff("same\n", "same\n", "A", "B") == []


def _keepalived_install(before: str, after: str) -> Step:
    return _keepalived_steps(before, after)["final/install"]


def test_shoal_plan_renders_the_file_diff_escaped_and_clipped() -> None:
    step = _keepalived_install(KEEPALIVED, KEEPALIVED.replace("line 9\n", "line 9 \x1b[31m\r\n"))
    buf = io.StringIO()
    print_lines(Console(file=buf, width=200, color_system=None), render_step(step))
    text = buf.getvalue().splitlines()
    assert text[1:4] == [
        f"      --- {CONF_PATH} (on lvs1)", f"      +++ {CONF_PATH} (planned)",
        "      @@ -6,7 +6,7 @@",
    ]  # fmt: skip
    # Control characters from the host are shown, never sent to the terminal.
    assert "      -line 9" in text and "      +line 9 \\x1b[31m\\x0d" in text
    assert not any("\x1b" in line for line in text)
    # A non-file step keeps its before/after lines.
    sysctl = Step(id="w/s/set", host="w", state_id="s", function="sysctl.present",
                  subsystem="sysctl", phase=Phase.EXTRA, description="set",
                  change=Change(before="k = 0", after="k = 1"))  # fmt: skip
    assert file_diff(sysctl) is None
    lines = [ln.strip() for ln in render_step(sysctl)[1:]]
    assert lines == ["[red]- k = 0[/]", "[green]+ k = 1[/]"]


def test_api_step_diff_and_host_diff_name_the_file(tmp_path: Path) -> None:
    api = PlanApi(tmp_path)
    base = make_plan("c" * 40, host="lvs1", digest="f" * 64)
    install = _keepalived_install(KEEPALIVED, KEEPALIVED.replace("line 2\n", "line two\n"))
    hp = base.hosts["lvs1"].model_copy(update={"steps": (*base.hosts["lvs1"].steps, install)})
    plan = base.model_copy(update={"hosts": {"lvs1": hp}, "id": "0123456789abcdef"})
    api.store.add_plan(plan, cluster="web", kind="change")
    shown = api.client.get(f"/plans/{plan.id}", headers=api.viewer).json()
    vip_step, install_out = shown["hosts"]["lvs1"]["steps"]
    assert vip_step["diff"] is None  # not a file: its change is in the host diff as before
    assert install_out["before"] == KEEPALIVED and install_out["after"].count("\n") == 55
    assert install_out["diff"].splitlines() == [
        f"--- {CONF_PATH} (on lvs1)", f"+++ {CONF_PATH} (planned)", "@@ -1,5 +1,5 @@",
        " line 1", "-line 2", "+line two", " line 3", " line 4", " line 5",
    ]  # fmt: skip
    host = shown["hosts"]["lvs1"]["diff"]
    assert install_out["diff"] in host and "+10.77.0.100/32 dev lo" in host
    assert host == host_diff(hp)


def test_shoal_plan_json_has_diffs_of_changed_files_only() -> None:
    step = _keepalived_install(KEEPALIVED, KEEPALIVED + "tail\n")
    new_file = _keepalived_steps(None, "x\n")["final/install"]
    writes_only = Step(id="h/w/write", host="h", state_id="w", function="file.managed",
                       subsystem="file", phase=Phase.EXTRA, description="create /etc/x",
                       change=Change(after="x\n"),
                       writes=(FileWrite(path="/etc/x", content="x\n"),))  # fmt: skip
    plan = make_plan("r")
    hp = plan.hosts["web1"].model_copy(update={"steps": (step, new_file, writes_only)})
    diffs = file_diffs(plan.model_copy(update={"hosts": {"web1": hp}}))
    assert list(diffs) == [step.id]
    assert diffs[step.id].endswith(" line 55\n+tail")


def test_run_plan_json_carries_diffs() -> None:
    # The example repository on fresh hosts: every file is new, so there is nothing to diff.
    buf = io.StringIO()
    run_plan(EXAMPLE, client_key=Path("/x"), as_json=True,
             console=Console(file=buf, width=200, color_system=None), gather=fresh)  # fmt: skip
    doc = json.loads(buf.getvalue())
    assert doc["diffs"] == {}
