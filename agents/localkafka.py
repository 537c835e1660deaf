"""Real single-node Apache Kafka (KRaft) broker from Maven Central, for dev, demo and tests."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from agents.hostprocs import (
    free_ports,
    pid_alive,
    pid_cmdline,
    port_free,
    port_open,
    run_coro,
    tail_file,
)
from agents.kafkadist import (
    HEAP,
    KAFKA_VERSION,
    cache_root,
    class_archive,
    ensure_kafka,
    tail,
)

__all__ = ["LocalKafka", "free_ports", "main"]


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """Silence aiokafka's connection errors while probing a broker that is still booting."""
    logger = logging.getLogger("aiokafka")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


async def _describe_cluster(bootstrap: str, limit_s: float) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(limit_s * 1000)),
        retry_backoff_ms=50,
    )
    try:
        await asyncio.wait_for(admin.start(), limit_s)
        info = await asyncio.wait_for(admin.describe_cluster(), limit_s)
        return dict(info)
    finally:
        await admin.close()


# ---------------------------------------------------------------------------------- LocalKafka


def storage_format_args(cluster_id: str, properties: Path) -> list[str]:
    """StorageTool's `format` arguments. A base64 cluster id starts with `-` one time in 64:
    as a separate argument it would read as an option, so it is joined to its flag."""
    return ["format", f"--cluster-id={cluster_id}", f"--config={properties}"]


class LocalKafka:
    """A single-node KRaft Kafka (broker + controller) on 127.0.0.1, state kept in `data_dir`.

    `start` launches it in its own process group and returns once a metadata round trip with
    aiokafka's admin client succeeds; `stop` works from any process through the pid file.
    """

    PID_FILE = "kafka.pid"

    def __init__(
        self,
        data_dir: Path,
        port: int = 9092,
        controller_port: int = 9093,
        *,
        sasl_port: int | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        """`sasl_port`: also a SASL_PLAINTEXT listener there (mechanism PLAIN, the users and
        passwords of `sasl_users`), for tests of canarywatch's SASL settings."""
        if port == controller_port or sasl_port in (port, controller_port):
            raise ValueError("port, controller_port and sasl_port must differ")
        self.sasl_port = sasl_port
        self.sasl_users = dict(sasl_users or {})
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.controller_port = controller_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._jvm_extra: list[str] | None = None  # set only for the class-archive training run

    # paths
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def log_dir(self) -> Path:
        """Kafka's data (`log.dirs`)."""
        return self.data_dir / "kraft-logs"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout and stderr."""
        return self.data_dir / "kafka.out"

    @property
    def server_log(self) -> Path:
        """log4j2's WARN-and-above log."""
        return self.data_dir / "logs" / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / self.PID_FILE

    # lifecycle
    def start(self, timeout: float = 60) -> None:
        """Start the broker (or adopt the one already running from this data dir) and wait
        until it answers a describe-cluster request; raise RuntimeError with the log tail if not.

        The first start on a machine also fetches Kafka and trains a class archive; `timeout`
        counts from after those one-off steps.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.is_running():
            self._wait_ready(time.monotonic() + timeout)
            return
        self.pid_file.unlink(missing_ok=True)
        ports = (self.port, self.controller_port, *([self.sasl_port] if self.sasl_port else []))
        busy = [p for p in ports if not port_free(p)]
        if busy:
            raise RuntimeError(f"port(s) {busy} on 127.0.0.1 are already in use")
        libs = ensure_kafka()
        java = self._java()
        extra = self._jvm_extra
        if extra is None:
            archive = class_archive(libs, java, _train_class_archive)
            extra = [] if archive is None else [f"-XX:SharedArchiveFile={archive}"]
        deadline = time.monotonic() + timeout
        self._write_configs()
        base = [java, "-cp", str(libs / "*"), *self._jvm_options(), *extra]
        if not (self.log_dir / "meta.properties").is_file():
            self._format_storage(base)
        with self.console_log.open("ab") as out:
            self._proc = subprocess.Popen(
                [*base, "kafka.Kafka", str(self.properties_path)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the broker's process group, SIGKILL after `timeout` s; no-op if not running."""
        pid = self._running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            self._proc = None
            return
        self._signal(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            self._signal(pid, signal.SIGKILL)
            if not self._wait_exit(pid, 10):
                raise RuntimeError(f"Kafka pid {pid} survived SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        self._proc = None

    def is_running(self) -> bool:
        return self._running_pid() is not None

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"LocalKafka({str(self.data_dir)!r}, port={self.port}, "
            f"controller_port={self.controller_port})"
        )

    # internals
    def _running_pid(self) -> int | None:
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc.pid
            self._proc = None
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        cmdline = pid_cmdline(pid)
        if "kafka.Kafka" not in cmdline or str(self.properties_path) not in cmdline:
            return None  # pid reused by an unrelated process
        return pid

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    @staticmethod
    def _java() -> str:
        home = os.environ.get("JAVA_HOME")
        if home and (Path(home) / "bin" / "java").is_file():
            return str(Path(home) / "bin" / "java")
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("Java 17+ is needed to run Kafka; install it (apt: openjdk-17-jre)")
        return java

    def _jvm_options(self) -> list[str]:
        return [
            "-Xms128m",
            f"-Xmx{HEAP}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.server_log.parent}",
        ]

    def _write_configs(self) -> None:
        self.server_log.parent.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            # single node, small machine
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.retention.ms": str(3600 * 1000),
            "log.retention.bytes": str(256 * 1024 * 1024),
            "log.segment.bytes": str(32 * 1024 * 1024),
            "log.retention.check.interval.ms": "60000",
        }
        if self.sasl_port is not None:
            listener = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
            props["listeners"] += "," + listener
            props["advertised.listeners"] += "," + listener
            props["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
            props["sasl.enabled.mechanisms"] = "PLAIN"
            users = "".join(f' user_{u}="{p}"' for u, p in self.sasl_users.items())
            props["listener.name.sasl_plaintext.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required{users};"
            )
        text = "# Written by agents/localkafka.py on each start; edits are overwritten.\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties_path.write_text(text)
        self.log4j_path.write_text(
            "status = error\n"
            "name = canarywatch-localkafka\n"
            "appender.file.type = File\n"
            "appender.file.name = FILE\n"
            f"appender.file.fileName = {self.server_log}\n"
            "appender.file.layout.type = PatternLayout\n"
            "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = WARN\n"
            "rootLogger.appenderRef.file.ref = FILE\n"
        )

    def _format_storage(self, base: list[str]) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = [
            *base,
            "kafka.tools.StorageTool",
            *storage_format_args(cluster_id, self.properties_path),
        ]
        proc = subprocess.run(
            cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            raise RuntimeError(f"kafka StorageTool format failed:\n{tail(out)}")

    def _cluster_id(self) -> str | None:
        try:
            text = (self.log_dir / "meta.properties").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "cluster.id":
                return value.strip()
        return None

    def _wait_ready(self, deadline: float) -> None:
        expected = self._cluster_id()
        last_error = "no answer"
        while True:
            pid = self._running_pid()
            if pid is None:
                raise RuntimeError(self._failure("Kafka exited during startup"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(self._failure(f"Kafka did not answer in time ({last_error})"))
            if port_open(self.port):
                try:
                    with _quiet_aiokafka():
                        info = run_coro(_describe_cluster(self.bootstrap, min(remaining, 5.0)))
                except Exception as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                else:
                    got = info.get("cluster_id")
                    if expected is None or got == expected:
                        return
                    raise RuntimeError(
                        self._failure(f"{self.bootstrap} is another cluster ({got} != {expected})")
                    )
            time.sleep(0.1)

    def _failure(self, what: str) -> str:
        parts = [f"{what}; data dir {self.data_dir}"]
        for path in (self.console_log, self.server_log):
            tail = tail_file(path)
            if tail:
                parts.append(f"--- tail of {path} ---\n{tail}")
        return "\n".join(parts)


def _train_class_archive(work: Path, jvm_extra: list[str]) -> None:
    """One short broker run in `work` with `jvm_extra` (the archive's dump flag)."""
    port, controller_port = free_ports(2)
    trainer = LocalKafka(work / "data", port, controller_port)
    trainer._jvm_extra = jvm_extra
    trainer.start(timeout=180)
    trainer.stop(timeout=180)


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.localkafka", description="Local single-node Apache Kafka broker."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start a broker in the background")
    p_start.add_argument("--dir", type=Path, default=Path(".kafka-data"))
    p_start.add_argument("--port", type=int, default=9092)
    p_start.add_argument("--controller-port", type=int, default=9093)
    p_start.add_argument("--timeout", type=float, default=60.0)
    p_stop = sub.add_parser("stop", help="stop the broker started from --dir")
    p_stop.add_argument("--dir", type=Path, default=Path(".kafka-data"))
    p_stop.add_argument("--timeout", type=float, default=20.0)
    p_status = sub.add_parser("status", help="exit 0 if the broker from --dir runs")
    p_status.add_argument("--dir", type=Path, default=Path(".kafka-data"))
    sub.add_parser("fetch", help=f"fetch Kafka {KAFKA_VERSION} into {cache_root()}")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            t0 = time.monotonic()
            libs = ensure_kafka()
            print(f"Kafka {KAFKA_VERSION} in {libs} ({time.monotonic() - t0:.1f} s)")
            return 0
        if args.command == "start":
            kafka = LocalKafka(args.dir, args.port, args.controller_port)
            t0 = time.monotonic()
            kafka.start(args.timeout)
            print(
                f"Kafka {KAFKA_VERSION} answering on {kafka.bootstrap} "
                f"({time.monotonic() - t0:.1f} s; logs in {kafka.data_dir})"
            )
            return 0
        if args.command == "stop":
            kafka = LocalKafka(args.dir)
            if not kafka.is_running():
                print(f"no Kafka running from {kafka.data_dir}")
                return 0
            kafka.stop(args.timeout)
            print(f"stopped Kafka from {kafka.data_dir}")
            return 0
        kafka = LocalKafka(args.dir)
        running = kafka.is_running()
        print(f"Kafka from {kafka.data_dir}: {'running' if running else 'not running'}")
        return 0 if running else 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
