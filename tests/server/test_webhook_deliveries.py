"""Webhook deliveries against a real `shoal serve` process: a replay, a body that is not JSON,
a push to another branch or a tag each wake nothing, also after a restart.

Wakes are counted with what the server reports (`GET /clusters` -> `loop`): `wakes` moves in
the request that asks for one, before its answer, so "this answer woke nothing" is read right
after the answer; `passes_completed` shows that each accepted delivery made exactly one pass.
The server polls once an hour here, so no pass comes from anywhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.serve import SECRET, ServeProcess

PUSH_MAIN = b'{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}'


def hub_signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def signed(scheme: str, body: bytes, delivery: str | None) -> dict[str, str]:
    """The headers a sender of `scheme` puts on a delivery."""
    if scheme == "github":
        headers = {"X-Hub-Signature-256": hub_signature(body), "X-GitHub-Event": "push"}
        id_header = "X-GitHub-Delivery"
    elif scheme == "gitlab":
        headers = {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"}
        id_header = "X-Gitlab-Event-UUID"
    else:
        headers = {"X-Shoal-Signature": hub_signature(body)}
        id_header = "X-Shoal-Delivery"
    if delivery is not None:
        headers[id_header] = delivery
    return {**headers, "Content-Type": "application/json"}


class Client:
    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self.http = httpx.Client(base_url=serve.url, timeout=30)
        self.accepted = 0  # deliveries answered `queued` since the process started

    def loop(self) -> dict[str, Any]:
        return self.serve.loop(self.http)

    def deliver(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.http.post("/webhooks/git", content=body, headers=headers)

    def wait_passes(self, completed: int, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until `completed` passes have finished and none is running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            loop = self.loop()
            if loop["passes_completed"] >= completed and (
                loop["passes_started"] == loop["passes_completed"]
            ):
                return loop
            time.sleep(0.05)
        raise AssertionError(f"no pass {completed} within {timeout} s: {self.loop()}")

    def accept(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """Deliver what must wake the loop once; wait for that one pass."""
        before = self.loop()
        response = self.deliver(body, headers)
        assert response.status_code == 202, response.text
        assert response.json()["outcome"] == "queued", response.json()
        assert self.loop()["wakes"] == before["wakes"] + 1
        self.accepted += 1
        self.wait_passes(before["passes_completed"] + 1)
        return response

    def refuse(self, body: bytes, headers: dict[str, str], status: int) -> dict[str, Any]:
        """Deliver what must wake nothing; its answer and an unchanged wake count."""
        before = self.loop()
        response = self.deliver(body, headers)
        assert response.status_code == status, response.text
        after = self.loop()
        assert (after["wakes"], after["passes_started"]) == (
            before["wakes"],
            before["passes_started"],
        ), (response.json(), before, after)
        body_json: dict[str, Any] = response.json()
        return body_json


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    serve = ServeProcess(tmp_path_factory.mktemp("webhooks"))
    c = Client(serve)
    try:
        serve.start()
        yield c
    finally:
        c.http.close()
        serve.stop()


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("scheme", ["github", "gitlab", "shoal"])
def test_a_replayed_delivery_wakes_the_loop_once(client: Client, scheme: str) -> None:
    delivery = new_id()
    start = client.wait_passes(1)
    first = client.accept(PUSH_MAIN, signed(scheme, PUSH_MAIN, delivery))
    assert first.json()["delivery"] == delivery and first.json()["scheme"] == scheme
    for _ in range(2):
        again = client.refuse(PUSH_MAIN, signed(scheme, PUSH_MAIN, delivery), 202)
        assert again["outcome"] == "duplicate" and again["queued"] is False, again
        assert delivery in again["reason"]
    # Without a delivery id nothing can be recognised: each is a wake (the poll's job is
    # the same anyway).
    client.accept(PUSH_MAIN, signed(scheme, PUSH_MAIN, None))
    assert client.wait_passes(0)["passes_completed"] == start["passes_completed"] + 2


def test_a_forged_delivery_does_not_use_up_its_id(client: Client) -> None:
    delivery = new_id()
    forged = {**signed("github", PUSH_MAIN, delivery), "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert client.refuse(PUSH_MAIN, forged, 401)["detail"]
    client.accept(PUSH_MAIN, signed("github", PUSH_MAIN, delivery))


@pytest.mark.parametrize("scheme", ["github", "gitlab", "shoal"])
def test_a_body_that_is_not_json_is_400(client: Client, scheme: str) -> None:
    # What GitHub sends when the webhook's content type is left at form-encoded.
    form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D"
    headers = {
        **signed(scheme, form, new_id()),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    detail = client.refuse(form, headers, 400)["detail"]
    assert "not JSON" in detail and "application/json" in detail
    assert "JSON object" in client.refuse(b"[]", signed(scheme, b"[]", new_id()), 400)["detail"]


def test_a_malformed_delivery_id_is_400(client: Client) -> None:
    detail = client.refuse(PUSH_MAIN, signed("shoal", PUSH_MAIN, "x" * 200), 400)["detail"]
    assert "x-shoal-delivery" in detail


def test_a_push_to_another_branch_or_a_tag_is_ignored(client: Client) -> None:
    repo = client.serve.repo
    sha = repo.commit("work on a feature branch", branch="feature")
    for ref in ("refs/heads/feature", "refs/tags/v1"):
        body = f'{{"ref":"{ref}","after":"{sha}"}}'.encode()
        for scheme in ("github", "gitlab", "shoal"):
            answer = client.refuse(body, signed(scheme, body, new_id()), 202)
            assert answer["outcome"] == "ignored" and answer["queued"] is False, answer
            assert ref in answer["reason"] and "refs/heads/main" in answer["reason"]


def test_a_replay_after_a_restart_still_wakes_nothing(client: Client) -> None:
    delivery = new_id()
    client.accept(PUSH_MAIN, signed("gitlab", PUSH_MAIN, delivery))
    # Every pass this process made came from one accepted delivery (and the first pass).
    assert client.wait_passes(0)["passes_completed"] == 1 + client.accepted
    client.serve.stop()
    client.serve.start()
    client.wait_passes(1)
    again = client.refuse(PUSH_MAIN, signed("gitlab", PUSH_MAIN, delivery), 202)
    assert again["outcome"] == "duplicate"
    client.accept(PUSH_MAIN, signed("gitlab", PUSH_MAIN, new_id()))
