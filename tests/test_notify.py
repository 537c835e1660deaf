"""The webhook notifier against a real HTTP server on loopback: payloads, retries with backoff,
the rate limit; and the notices it builds (streams/notify.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from agents.notify import NotifyOptions, Webhook
from agents.processes import poll_until
from streams.events import AbortCommand, Evidence
from streams.notify import TokenBucket, abort_notice, backoff_s, explain_link, payload


@dataclass
class Hook:
    url: str
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    fail_first: int = 0
    calls: int = 0


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    """A webhook receiver on loopback that fails its first `fail_first` calls with 503."""
    state = Hook("")

    async def receive(request: web.Request) -> web.Response:
        state.calls += 1
        if state.calls <= state.fail_first:
            return web.Response(status=503)
        state.received.append((time.monotonic(), await request.json()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


def command(env: str = "shop/web") -> AbortCommand:
    ns, rollout = env.split("/")
    evidence = Evidence("errors", 118, 9, 1042, 1, 5.31, 4.61, 0.1, 41.5)
    return AbortCommand(f"{env}@c1", ns, rollout, "c1", 1.0, evidence, "web:2.0.0",
                        "CanaryErrorsRegression")  # fmt: skip


async def run_webhook(webhook: Webhook) -> asyncio.Task[None]:
    return asyncio.create_task(webhook.run())


async def test_abort_is_posted_slack_compatible_with_evidence_and_link_after_retries(
    hook: Hook,
) -> None:
    hook.fail_first = 2
    webhook = Webhook(
        NotifyOptions(hook.url, "slack", "http://board.example:9120", backoff_base_s=0.05)
    )
    task = await run_webhook(webhook)
    try:
        assert webhook.submit(abort_notice(command(), "http://board.example:9120"))
        assert not webhook.submit(abort_notice(command(), "http://board.example:9120"))  # once
        # The hook records the request before the client reads its response, so wait for the
        # sender's own count, not the hook's.
        await poll_until(lambda: webhook.sent == 1, 10, "the webhook to be called")
    finally:
        task.cancel()
    assert hook.calls == 3 and webhook.sent == 1
    body = hook.received[0][1]
    assert "canarywatch aborted shop/web" in body["text"]
    assert "canary 9/118 bad" in body["blocks"][1]["text"]["text"]
    assert "<http://board.example:9120/api/explain/shop/web|explain>" in str(body["blocks"][2])


async def test_plain_json_is_rate_limited(hook: Hook) -> None:
    webhook = Webhook(NotifyOptions(hook.url, "json", rate_per_s=4.0, burst=2))
    task = await run_webhook(webhook)
    try:
        for i in range(6):
            webhook.submit(abort_notice(command(f"ns{i}/web")))
        await poll_until(lambda: len(hook.received) == 6, 20, "six notices")
    finally:
        task.cancel()
    times = [t for t, _ in hook.received]
    # Burst of 2, then 4/s: the last four arrive at least 0.25 s apart on average.
    assert times[-1] - times[1] >= 0.9, times
    body = hook.received[0][1]
    assert body["kind"] == "abort" and body["evidence"]["canary_bad"] == 9
    assert body["explain"] == "canarywatch explain ns0/web"


async def test_a_webhook_that_keeps_failing_is_given_up_after_its_attempts(hook: Hook) -> None:
    hook.fail_first = 100
    webhook = Webhook(NotifyOptions(hook.url, "json", attempts=3, backoff_base_s=0.01))
    task = await run_webhook(webhook)
    try:
        webhook.submit(abort_notice(command()))
        await poll_until(lambda: webhook.failed == 1, 10, "the notice to be given up")
    finally:
        task.cancel()
    assert hook.calls == 3 and not hook.received


def test_pacing_and_payload_logic() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2)
    assert [bucket.wait_s(0.0), bucket.wait_s(0.0)] == [0.0, 0.0]
    assert bucket.wait_s(0.0) == pytest.approx(0.5)
    assert bucket.wait_s(0.5) == 0.0
    assert [backoff_s(a, 0.5, 4.0) for a in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert explain_link("http://x/", "a/b") == "http://x/api/explain/a/b"
    assert payload(abort_notice(command()), "json")["decision_id"] == "shop/web@c1"
