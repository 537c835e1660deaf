"""The operator's tools on the running system: a real broker, two real worker processes judging
a simulated fleet, and `canarywatch status`, `explain`, the fleet board (in headless Chromium)
and the webhook notifier (to a real HTTP server on loopback), each checked against what the
workers themselves report on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agents.kafka_admin import ensure_topics
from agents.notify import Notifier, NotifyOptions
from agents.processes import WorkerProcess, free_port, poll_until, scrape
from agents.settings import Settings, Topics, settings_to_env
from agents.simulator import SimulationRun, producer_for
from agents.status import StatusOptions, status_once
from agents.ui import Board
from streams.simulation import EnvPlan, Scenario, SimulationSettings

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
FLEET = SimulationSettings(environments=40, healthy=12, bad=3, platform=2)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@dataclass
class System:
    settings: Settings
    plans: list[EnvPlan]
    workers: list[WorkerProcess]
    hook_received: list[dict[str, Any]]
    board: Board

    def envs(self, scenario: Scenario) -> set[str]:
        return {p.env for p in self.plans if p.scenario == scenario}

    def worker_verdicts(self) -> dict[str, set[str]]:
        """env -> the set of per-signal verdicts the workers export (canarywatch_env_verdict)."""
        out: dict[str, set[str]] = {}
        for worker in self.workers:
            samples = scrape(worker.settings.metrics_port, ("canarywatch_env_verdict",))
            for (_, labels), value in samples.items():
                label = dict(labels)
                if value == 1.0:
                    out.setdefault(label["env"], set()).add(label["verdict"])
        return out

    def cli(self, *args: str) -> str:
        env = {**os.environ, **settings_to_env(self.settings)}
        done = subprocess.run(
            [sys.executable, "-m", "agents.cli", *args],
            capture_output=True, text=True, env={**env, "COLUMNS": "250"}, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout


def ensure_chromium() -> None:
    """Debian's chromium, installed by the project's own script when missing."""
    if not Path(CHROMIUM).exists():
        subprocess.run([str(REPO / "scripts" / "ensure-chromium.sh")], check=True, timeout=900)


async def hook_server(received: list[dict[str, Any]]) -> web.AppRunner:
    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    return runner


@pytest.fixture(scope="module")
async def system(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    tmp = tmp_path_factory.mktemp("operator")
    run_id = uuid.uuid4().hex[:8]
    base = Settings(
        bootstrap=kafka_bootstrap,
        app_id=f"op-{run_id}",
        topics=Topics(f"op-{run_id}"),
        partitions=2,
        replication_factor=1,  # the single local broker
        data_dir=tmp / "worker",
        verdict_refresh_s=2.0,
    )
    await ensure_topics(base.bootstrap, base.topic_partitions())
    workers = [
        WorkerProcess(
            base.with_overrides(metrics_port=free_port(), data_dir=tmp / f"w{i}"),
            tmp / f"worker{i}.log",
        )
        for i in range(2)
    ]
    received: list[dict[str, Any]] = []
    runner = await hook_server(received)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    producer = producer_for(base.bootstrap)
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            worker.start()
            stack.callback(worker.stop)
        for worker in workers:
            await worker.wait_ready()
        board = await stack.enter_async_context(Board(base, port=0))
        notifier = await stack.enter_async_context(
            Notifier(
                base,
                NotifyOptions(
                    f"http://127.0.0.1:{port}/hook", "json",
                    explain_base_url=f"http://127.0.0.1:{board.port}", rate_per_s=20, burst=20,
                ),
            )
        )  # fmt: skip
        await poll_until(notifier.following.is_set, 30, "the notifier to follow its topics")
        await producer.start()
        stack.push_async_callback(producer.stop)
        run = SimulationRun(FLEET, 20261201, start=time.time())
        playing = asyncio.create_task(run.play(producer, base.topics, float("inf"), stop=stop))

        async def stop_playing() -> None:
            stop.set()
            await playing

        stack.push_async_callback(stop_playing)
        stack.push_async_callback(runner.cleanup)
        yield System(base, run.plans, workers, received, board)


async def test_status_shows_every_canary_with_the_workers_verdicts(system: System) -> None:
    bad, platform = system.envs(Scenario.BAD), system.envs(Scenario.PLATFORM)
    assert len(bad) == 3 and len(platform) == 2

    async def settled() -> dict[str, str]:
        rows = await status_once(system.settings, StatusOptions())
        return {r.env: r.verdict for r in rows}

    deadline = time.monotonic() + 60
    while True:
        verdicts = await settled()
        aborted = {e for e, v in verdicts.items() if v == "abort"}
        held = {e for e, v in verdicts.items() if v == "platform"}
        if aborted == bad and held == platform:
            break
        assert time.monotonic() < deadline, verdicts
        await asyncio.sleep(0.5)  # poll interval while the workers judge the fleet

    # The CLI's JSON agrees with what both workers export, env by env.
    def consistent() -> bool:
        items = json.loads(system.cli("status", "-o", "json"))["items"]
        exported = system.worker_verdicts()
        if {i["namespace"] + "/" + i["rollout"] for i in items} != set(exported):
            return False
        for item in items:
            env = item["namespace"] + "/" + item["rollout"]
            if (item["verdict"] == "abort") != ("abort" in exported[env]):
                return False
            if (item["verdict"] == "platform") != (
                "platform" in exported[env] and "abort" not in exported[env]
            ):
                return False
        return bool(items)

    await poll_until(consistent, 30, "status to agree with the workers' /metrics", every_s=0.5)
    items = json.loads(await asyncio.to_thread(system.cli, "status", "-o", "json"))["items"]
    assert [i["verdict"] for i in items[:3]] == ["abort"] * 3  # most urgent first
    first = items[0]
    assert first["weight"] in FLEET.weights and first["step"] is not None
    assert first["release"] == "2.0.0" and first["signals"][0]["canaryBad"] > 0
    table = await asyncio.to_thread(system.cli, "status", "--verdict", "abort")
    assert "ROLLOUT" in table and all(e.split("/")[0] in table for e in bad), table
    namespace = sorted(bad)[0].split("/")[0]
    only = json.loads(await asyncio.to_thread(system.cli, "status", "-o", "json", "-n", namespace))
    assert [i["verdict"] for i in only["items"]] == ["abort"]


async def test_explain_says_why_and_plots_the_canarys_life(system: System, tmp_path: Path) -> None:
    env = sorted(system.envs(Scenario.BAD))[0]
    await poll_until(
        lambda: "ABORT" in system.cli("explain", env), 60, f"{env} to be explained as aborted"
    )
    plot = tmp_path / "explain.png"
    text = await asyncio.to_thread(system.cli, "explain", env, "--plot", str(plot))
    assert "Aborted:" in text and "statistic" in text, text
    assert plot.stat().st_size > 10_000
    healthy = sorted(system.envs(Scenario.HEALTHY))[0]
    text = system.cli("explain", healthy)
    assert (("An abort needs" in text or "Passed:" in text) and "A pass needs" in text) or (
        "Passed:" in text
    ), text


async def test_the_board_in_chromium_shows_what_the_workers_decided(
    system: System, tmp_path: Path
) -> None:
    await asyncio.to_thread(ensure_chromium)
    from playwright.async_api import async_playwright

    bad = system.envs(Scenario.BAD)
    await poll_until(
        lambda: (
            {r["namespace"] + "/" + r["rollout"] for r in system.board.board_json()["aborts"]}
            == bad
        ),
        60,
        "the board to hold every abort",
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1100})
            await page.goto(f"http://127.0.0.1:{system.board.port}/")
            for env in bad:
                await page.wait_for_selector(
                    f'#releases tr[data-env="{env}"][data-verdict="abort"]'
                )
                await page.wait_for_selector(f'#aborts tr[data-env="{env}"]')
            shown = await page.eval_on_selector_all(
                "#releases tr[data-env]",
                "rows => rows.map(r => [r.dataset.env, r.dataset.verdict])",
            )
            evidence = await page.inner_text("#aborts")
            # Live: the page redraws from the endpoint.
            before = await page.get_attribute("body", "data-generated-at")
            await page.wait_for_function(
                f"document.body.dataset.generatedAt !== '{before}'", timeout=10_000
            )
            shot = tmp_path / "board.png"
            await page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("CANARYWATCH_SAVE_BOARD"):
                shutil.copyfile(shot, os.environ["CANARYWATCH_SAVE_BOARD"])
        finally:
            await browser.close()
    exported = system.worker_verdicts()
    shown_map = dict(shown)
    assert {e for e, v in shown_map.items() if v == "abort"} == bad
    assert set(shown_map) == set(exported), (shown_map, exported)
    for env in bad:
        assert "abort" in exported[env]
    assert "canary" in evidence and "statistic" in evidence
    assert shot.stat().st_size > 20_000


async def test_the_notifier_posted_each_abort_and_platform_hold_once(system: System) -> None:
    bad, platform = system.envs(Scenario.BAD), system.envs(Scenario.PLATFORM)

    def kinds() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for body in system.hook_received:
            out.setdefault(body["kind"], set()).add(body["env"])
        return out

    await poll_until(
        lambda: kinds().get("abort") == bad and kinds().get("platform") == platform,
        60,
        "a notice per abort and per platform hold",
    )
    aborts = [b for b in system.hook_received if b["kind"] == "abort"]
    assert len(aborts) == len(bad)  # once each
    for body in aborts:
        assert body["evidence"]["canary_bad"] > 0
        assert body["evidence"]["statistic"] >= body["evidence"]["threshold"]
        assert body["explain"].endswith("/api/explain/" + body["env"])
    # The link works: the board explains the aborted canary.
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(aborts[0]["explain"]) as reply:
        assert reply.status == 200
        assert "Aborted:" in "\n".join((await reply.json())["lines"])


async def test_replay_of_the_topics_decides_what_the_workers_decided(system: System) -> None:
    """`canarywatch replay --from-topic`: the recorded topics through the engine, offline,
    abort the canaries the live workers aborted, and only those."""
    bad = system.envs(Scenario.BAD)
    await poll_until(
        lambda: (
            {r["namespace"] + "/" + r["rollout"] for r in system.board.board_json()["aborts"]}
            == bad
        ),
        60,
        "the workers to abort every bad canary",
    )
    out = json.loads(await asyncio.to_thread(system.cli, "replay", "--from-topic", "-o", "json"))
    assert {a["env"] for a in out["aborts"]} == bad, out["aborts"]
    assert out["requests"] > 1000 and out["states"] >= len(system.plans)


def watch_twice(system: System) -> tuple[list[dict[str, Any]], int]:
    """`status --watch -o json`: two refreshes read from its output, then Ctrl-C."""
    env = {**os.environ, **settings_to_env(system.settings)}
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.cli", "status", "--watch", "-o", "json", "--every", "0.3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    docs = [json.loads(process.stdout.readline()) for _ in range(2)]
    process.send_signal(signal.SIGINT)
    return docs, process.wait(30)


async def test_status_watch_refreshes_until_interrupted(system: System) -> None:
    docs, code = await asyncio.to_thread(watch_twice, system)
    assert code == 0
    assert all(doc["items"] for doc in docs)
    # Refreshed: the workers' snapshots moved on between the two reads.
    seen = [{i["namespace"]: i["seenSecondsAgo"] for i in doc["items"]} for doc in docs]
    assert seen[0] != seen[1]
