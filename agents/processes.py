"""Run a canarywatch worker as a child process and wait until it is ready (demo, tests, bench)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from agents.hostprocs import free_ports
from agents.settings import Settings, settings_to_env

T = TypeVar("T")


def free_port() -> int:
    return free_ports(1)[0]


async def poll_until(
    check: Callable[[], T], within_s: float, what: str, *, every_s: float = 0.05
) -> T:
    """Run `check` (in a thread: it may do I/O) until its result is truthy, or time out."""
    deadline = time.monotonic() + within_s
    while not (result := await asyncio.to_thread(check)):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {within_s:.0f}s for {what}")
        await asyncio.sleep(every_s)
    return result


async def poll_until_async(
    check: Callable[[], Awaitable[object]], within_s: float, what: str, *, every_s: float = 0.2
) -> None:
    """`poll_until` for checks that are coroutines (e.g. ones that read Kafka)."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {within_s:.0f}s for {what}")
        await asyncio.sleep(every_s)


def scrape(
    port: int, names: tuple[str, ...] = ()
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of a /metrics endpoint (only of `names` if given), keyed by (name, labels)."""
    query = "?" + "&".join(f"name[]={name}" for name in names) if names else ""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def read_metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a /metrics endpoint, or None when absent."""
    return scrape(port, (name,)).get((name, frozenset(labels.items())))


class WorkerProcess:
    """`canarywatch worker` (or another `command`: `releases`) in a child process, logging to
    `log_path`; ready when its `ready_metric` reads 1."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        cpus: frozenset[int] | None = None,
        *,
        command: str = "worker",
        ready_metric: str = "canarywatch_ready",
    ) -> None:
        self.settings = settings
        self.command = command
        self.ready_metric = ready_metric
        self.log_path = log_path
        self.cpus = cpus  # run on these CPUs only (all its threads), e.g. one worker per core
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = {**os.environ, **settings_to_env(self.settings)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", self.command],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if self.cpus is None else self._pin,
        )

    def _pin(self) -> None:
        assert self.cpus is not None
        os.sched_setaffinity(0, self.cpus)

    async def wait_ready(self, within_s: float = 90.0) -> None:
        """Poll the process's ready gauge until it reads 1."""
        deadline = time.monotonic() + within_s
        port = self.settings.metrics_port
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"{self.command} exited early; log:\n{self.log_tail()}")
            if await asyncio.to_thread(read_metric, port, self.ready_metric) == 1.0:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.command} not ready after {within_s}s; log:\n{self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def returncode(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return None if self._process is None else self._process.poll()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a node failure would: no shutdown, no leaving the group."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
        return process.returncode


def release_agent_process(settings: Settings, log_path: Path) -> WorkerProcess:
    """`canarywatch releases` in a child process, ready once it restored its partitions."""
    return WorkerProcess(
        settings, log_path, command="releases", ready_metric="canarywatch_release_agent_ready"
    )
