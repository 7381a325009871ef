"""The web pages in a real browser: Debian's Chromium, headless, against a real `shoal serve`
over lab hosts, from a pushed commit to verified traffic.

Playwright drives the system Chromium (`executable_path`, so nothing is downloaded at test
time): its locators wait for a condition with a deadline, which is what watching a live run
needs on a busy machine, and its request context carries the browser's own cookies, so a
forged POST is the signed-in browser's, not a hand-built client's.

One lab, one server, one browser for the module; the tests run in order and each starts from
the state the one before left, as a person's session would: a viewer reads (with JavaScript
off), an approver's Approve of a plan the hosts moved under is refused with a link to the new
plan, the new plan is approved and its run followed live until verified, the approval is found
in the audit log, and the overview shows the cluster in sync and healthy. Screenshots of the
overview, a plan and a run go to docs/screenshots/ (the README shows them).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from tests.conftest import in_ci
from tests.lab.server_support import FIXTURE_REPO, ServeProcess, set_in_file, sign
from tests.server.serve import git, pushing_repo

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshots are rewritten only on request (ids and times differ every run, so an
# ordinary `make test` would leave the tree changed); otherwise they go to the test's tmp dir.
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
WRITE_DOCS_SCREENSHOTS = os.environ.get("SHOAL_SCREENSHOTS") == "1"
CHROMIUM = os.environ.get("SHOAL_CHROMIUM", "/usr/bin/chromium")
# Generous: the machine is shared; each wait ends as soon as its condition holds.
WAIT_MS = 180_000

try:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright, expect
    from playwright.async_api import async_playwright as _async_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    _async_playwright = None  # type: ignore[assignment]


def require_browser() -> None:
    missing = []
    if _async_playwright is None:
        missing.append("playwright (the dev extra)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"{CHROMIUM} (apt package chromium: scripts/setup.sh --tests)")
    if missing:
        message = f"browser test prerequisites missing: {', '.join(missing)}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: lab tests must run)", pytrace=False)
        pytest.skip(message)


@dataclass
class Site:
    lab: Lab
    serve: ServeProcess
    browser: Browser
    url: str
    sha: str
    contexts: dict[str, BrowserContext]
    seen: dict[str, Any]
    tmp: Path
    work: Path

    async def page(self, role: str) -> Page:
        """A tab of `role`'s browser context (its own cookies), signed in on first use."""
        context = self.contexts.get(role)
        if context is None:
            # The viewer reads with JavaScript off: the read-only pages must not need it.
            context = await self.browser.new_context(
                java_script_enabled=role != "viewer", viewport={"width": 1200, "height": 900}
            )
            self.contexts[role] = context
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(f"{self.url}/ui/")
            await expect(page).to_have_url(f"{self.url}/ui/sign-in?next=/ui/")
            await page.fill("#token", self.serve.tokens[role])
            await page.keyboard.press("Enter")  # keyboard-usable: no click needed
            await expect(page).to_have_url(f"{self.url}/ui/")
            return page
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        return page

    async def pending_plan(self) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_MS / 1000
        while time.monotonic() < deadline:
            plans = await self.serve.get("/plans?state=pending")
            mine = [p for p in plans if p["revision"] == self.sha]
            if mine:
                return dict(mine[0])
            await asyncio.sleep(0.2)
        raise AssertionError("no pending plan for the pushed commit")


async def screenshot(site: Site, page: Page, name: str, *, full_page: bool = True) -> None:
    folder = DOCS_SCREENSHOTS if WRITE_DOCS_SCREENSHOTS else site.tmp / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000, f"{path}: an empty screenshot"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def site(
    session_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    require_browser()
    assert _async_playwright is not None
    tmp = tmp_path_factory.mktemp("web")
    async with Lab.up(f"w{session_token}", Topology.default(), ephemeral=True) as lab:
        # Verification on: real requests from client1 through the VIP, answered by these.
        await start_services(lab, [80])
        bare, work = pushing_repo(tmp, "web-test")
        lab.write_config_repo(FIXTURE_REPO, work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "web cluster: lvs1/lvs2, web1 w1, web2 w2", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        serve = ServeProcess(lab, tmp, bare)
        playwright: Playwright | None = None
        browser: Browser | None = None
        try:
            await serve.start()
            playwright = await _async_playwright().start()
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            url = str(serve.http.base_url).rstrip("/")
            yield Site(lab, serve, browser, url, sha, {}, {}, tmp, work)
        finally:
            if browser is not None:
                await browser.close()
            if playwright is not None:
                await playwright.stop()
            await serve.stop()
            await serve.http.aclose()
            await stop_services(lab)


async def test_a_viewer_reads_the_plan_without_javascript_and_cannot_approve(site: Site) -> None:
    plan = await site.pending_plan()
    page = await site.page("viewer")
    await expect(page.locator("#cluster-web")).to_contain_text("changes pending")
    await page.locator(f'#cluster-web a[href="/ui/plans/{plan["id"]}"]').first.click()
    await expect(page).to_have_url(f"{site.url}/ui/plans/{plan['id']}")
    await expect(page.locator("#host-web1")).to_contain_text("net.ipv4.conf.all.arp_ignore = 1")
    await expect(page.locator("#woken-by")).to_have_text("the server started")
    await expect(page.locator("#read-only")).to_be_visible()
    assert await page.locator("#approve").count() == 0
    # A forged approval from the viewer's own signed-in browser, with its valid CSRF token.
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf
    forged = await page.request.post(
        f"{site.url}/ui/plans/{plan['id']}/approve", form={"csrf": csrf, "comment": "forged"}
    )
    assert forged.status == 403, await forged.text()
    assert (await site.serve.get(f"/plans/{plan['id']}"))["state"] == "pending"


async def test_a_post_without_the_csrf_token_is_refused(site: Site) -> None:
    plan = await site.pending_plan()
    page = await site.page("approver")
    answer = await page.request.post(
        f"{site.url}/ui/plans/{plan['id']}/approve", form={"comment": "no csrf"}
    )
    assert answer.status == 403, await answer.text()
    assert (await site.serve.get(f"/plans/{plan['id']}"))["state"] == "pending"


async def test_approving_a_plan_the_hosts_moved_under_is_refused_with_the_new_plan(
    site: Site,
) -> None:
    plan = await site.pending_plan()
    page = await site.page("approver")
    await page.goto(f"{site.url}/ui/plans/{plan['id']}")
    await expect(page.locator("#host-web1")).to_contain_text("net.ipv4.conf.all.arp_ignore = 1")
    # Someone changes web1 by hand between the plan and the approval.
    await site.lab.exec("web1", ["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=1"])
    await page.click("#approve")
    refused = page.locator("#refused")
    await expect(refused).to_contain_text("Approve refused: this plan is stale")
    await expect(refused).to_contain_text("facts changed on web1")
    await page.click("#successor-link")
    new_id = page.url.rsplit("/", 1)[1]
    assert new_id != plan["id"]
    await expect(page.locator("h1")).to_contain_text("pending")
    approver = "token:" + site.serve.tokens["approver"].split("_")[1]
    await expect(page.locator("#woken-by")).to_have_text(
        f"{approver}'s approval of plan {plan['id']} (facts changed on web1)"
    )
    # The old plan's own page says it is stale and links the new one; no Approve there.
    old = await site.page("approver")
    await old.goto(f"{site.url}/ui/plans/{plan['id']}")
    await expect(old.locator("#stale")).to_contain_text("This plan is stale")
    assert await old.locator("#successor-link").get_attribute("href") == f"/ui/plans/{new_id}"
    assert await old.locator("#approve").count() == 0
    await old.close()
    # The top of the plan (its 31 steps' diffs make the whole page very long).
    await page.set_viewport_size({"width": 1200, "height": 1600})
    await screenshot(site, page, "plan", full_page=False)
    site.seen["plan_page"] = page
    site.seen["plan_id"] = new_id


async def test_approve_and_watch_the_run_reach_verified(site: Site) -> None:
    page: Page = site.seen["plan_page"]
    await page.fill("#comment", "approved in the browser test")
    await page.click("#approve")
    await page.wait_for_url(f"{site.url}/ui/runs/*")
    run_id = page.url.rsplit("/", 1)[1]
    # No reload from here on: the page follows the run by itself until it is verified.
    await expect(page.locator("#run-outcome")).to_have_text("verified", timeout=WAIT_MS)
    bars = page.locator("svg.distribution rect.bar")
    await expect(bars).to_have_count(2)
    assert await page.locator("svg.distribution").get_attribute("aria-label") is not None
    await expect(page.locator("td.arp-owner").first).to_have_text("lvs1")
    await expect(page.locator("#backups-h")).to_be_visible()
    run = await site.serve.get(f"/runs/{run_id}")
    assert run["state"] == "applied" and run["verification"]["ok"] is True, run
    await screenshot(site, page, "run")
    site.seen["run_id"] = run_id


async def test_the_approval_is_in_the_audit_log(site: Site) -> None:
    page = await site.page("approver")
    await page.goto(f"{site.url}/ui/audit")
    await page.fill("#f-action", "plan.approved")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/ui/audit\?.*action=plan\.approved"))
    row = page.locator("tr.audit-entry").first
    # `shoal token create` without --name names the token by its id (its text's 2nd field).
    approver = "token:" + site.serve.tokens["approver"].split("_")[1]
    await expect(row).to_contain_text(approver)
    await expect(row).to_contain_text("approved in the browser test")
    await expect(row).to_contain_text(site.seen["plan_id"])
    await page.close()


async def test_the_overview_shows_the_cluster_in_sync_and_verified(site: Site) -> None:
    page = await site.page("approver")
    await page.goto(f"{site.url}/ui/")
    web = page.locator("#cluster-web")
    await expect(web).to_contain_text("in sync")
    await expect(web).to_contain_text("verification passed")
    await expect(web).to_contain_text("web cluster: lvs1/lvs2, web1 w1, web2 w2")
    await expect(web.locator(".holders")).to_have_text("lvs1")
    await screenshot(site, page, "overview")
    # A narrow screen: nothing wider than the window (tables scroll inside their box).
    await page.set_viewport_size({"width": 360, "height": 800})
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 362, width
    await page.close()


async def test_a_webhook_plan_is_rejected_then_reconcile_now_and_the_history_show_it(
    site: Site,
) -> None:
    """A commit announced by a signed webhook: its plan says so, an approver rejects it with a
    comment, an admin asks for a pass (the rejected plan is not proposed again), and the
    cluster's history lists both plans with who decided and the run of the first."""
    set_in_file(site.work / "clusters" / "web.toml", r"^  weight = 2$", "  weight = 3")
    git("commit", "-q", "-am", "web2 weight 3", cwd=site.work)
    git("push", "-q", "origin", "main", cwd=site.work)
    site.sha = git("rev-parse", "HEAD", cwd=site.work)
    body = b'{"ref":"refs/heads/main"}'
    delivered = await site.serve.http.post(
        "/webhooks/git", content=body, headers={"X-Hub-Signature-256": sign(body)}
    )
    assert delivered.status_code == 202, delivered.text
    plan = await site.pending_plan()
    page = await site.page("approver")
    await page.goto(f"{site.url}/ui/plans/{plan['id']}")
    await expect(page.locator("#woken-by")).to_contain_text("webhook")
    await expect(page.locator("#woken-by")).to_contain_text(
        f"which found the new commit {site.sha[:12]}"
    )
    # Weights 1 and 3: lvs1 hashes over four slots, one of them web1's.
    await expect(page.locator("#host-lvs1")).to_contain_text("mod 4 map { 0 : ")
    await page.fill("#comment", "not during the sale")
    await page.click("#reject")
    await expect(page.locator("h1")).to_contain_text("rejected")
    assert await page.locator("#approve").count() == 0
    assert (await site.serve.get(f"/plans/{plan['id']}"))["state"] == "rejected"
    await page.close()

    admin = await site.page("admin")
    passes = (await site.serve.get("/clusters"))["loop"]["passes_completed"]
    await admin.click("#reconcile-now")
    await expect(admin.locator("#queued")).to_contain_text("A pass was requested")
    deadline = time.monotonic() + WAIT_MS / 1000
    while (await site.serve.get("/clusters"))["loop"]["passes_completed"] <= passes:
        assert time.monotonic() < deadline, "Reconcile now made no pass"
        await asyncio.sleep(0.2)
    # The pass found the same plan, rejected: nothing new is proposed for that commit.
    assert await site.serve.get("/plans?state=pending") == []

    await admin.goto(f"{site.url}/ui/clusters/web")
    rows = admin.locator("table.history tbody tr")
    await expect(rows).to_have_count(3)  # the stale plan, the applied one, the rejected one
    rejected = rows.filter(has=admin.locator(f'a[href="/ui/plans/{plan["id"]}"]'))
    await expect(rejected).to_contain_text("rejected by token:")
    await expect(rejected).to_contain_text("not during the sale")
    applied = rows.filter(has=admin.locator(f'a[href="/ui/runs/{site.seen["run_id"]}"]'))
    await expect(applied).to_contain_text("approved by token:")
    await admin.goto(f"{site.url}/ui/audit?action=reconcile.requested")
    admin_actor = "token:" + site.serve.tokens["admin"].split("_")[1]
    await expect(admin.locator("tr.audit-entry").first).to_contain_text(admin_actor)
    await admin.close()
