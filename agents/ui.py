"""`canarywatch ui`: the fleet board in the browser, live.

An aiohttp server: `/` is one static page that polls `/api/board` every second; the board is
built (streams.status.board) from the verdicts topic, followed live like the gate does
(agents.gate.VerdictStore), and the commands topic (every abort with its evidence) read from
the beginning. `/api/explain/{namespace}/{rollout}` answers `canarywatch explain`'s sentences,
the link target of the notifier's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer

from agents.follow import TopicFollower
from agents.gate import VerdictStore
from agents.kafka_auth import PLAINTEXT, KafkaAuth
from agents.settings import Settings
from streams.events import readable_abort_commands
from streams.status import board, explain, status_rows

log = logging.getLogger("canarywatch.ui")
PAGE = Path(__file__).with_name("ui.html")


class CommandLog(TopicFollower):
    """Every abort command on the commands topic, from the beginning, as JSON objects."""

    def __init__(self, bootstrap: str, topic: str, auth: KafkaAuth = PLAINTEXT) -> None:
        super().__init__(bootstrap, topic, auth)
        self.aborts: dict[str, dict[str, Any]] = {}

    async def follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for command in readable_abort_commands(r.value for r in records):
                    self.aborts[command.decision_id] = asdict(command)


class Board:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 9120) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.verdicts = VerdictStore(settings.bootstrap, settings.topics.verdicts, settings.kafka)
        self.commands = CommandLog(settings.bootstrap, settings.topics.commands, settings.kafka)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_get("/api/board", self.api_board)
        app.router.add_get("/api/explain/{namespace}/{rollout}", self.api_explain)
        return app

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    def board_json(self) -> dict[str, Any]:
        now = time.time()
        rows = status_rows(
            self.verdicts.snapshots.values(), now, stale_after_s=self.settings.gate_max_age_s
        )
        out = board(rows, list(self.commands.aborts.values()))
        out["generatedAt"] = now
        out["caughtUp"] = self.verdicts.caught_up.is_set()
        return out

    async def api_board(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.board_json())

    async def api_explain(self, request: web.Request) -> web.StreamResponse:
        env = f"{request.match_info['namespace']}/{request.match_info['rollout']}"
        snapshot = self.verdicts.snapshots.get(env)
        if snapshot is None:
            return web.json_response({"error": f"no canary in progress for {env}"}, status=404)
        return web.json_response({"env": env, "lines": explain(snapshot, time.time())})

    async def __aenter__(self) -> Board:
        await self.verdicts.start()
        await self.commands.start()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert server is not None
            self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.commands.stop()
        await self.verdicts.stop()


def run_ui(settings: Settings, host: str, port: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def serve() -> None:
        async with Board(settings, host, port) as ui:
            print(f"canarywatch ui: http://{host}:{ui.port}/", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0
