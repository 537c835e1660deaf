"""One typed settings object for every component, read from the environment or CLI flags."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from streams.decisions import DecisionSettings
from streams.events import MAX_MESSAGE_BYTES
from streams.fleet import WindowSettings
from streams.promotion import PromotionSettings


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names: `<prefix>.requests`, `.rollouts`, `.commands`, `.deadletter`, `.verdicts`."""

    prefix: str = "canarywatch"

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def rollouts(self) -> str:
        return f"{self.prefix}.rollouts"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def verdicts(self) -> str:
        """Compacted, keyed by env: each canary's latest pass/abort/inconclusive snapshot."""
        return f"{self.prefix}.verdicts"


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "canarywatch"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4  # for the topics canarywatch creates
    metrics_port: int = 9108
    evaluate_every_s: float = 0.25
    commit_every_s: float = 1.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # The request-log topic and dead-letter topic accept messages over the decode limit, so an
    # oversized message reaches canarywatch, is refused with a reason, and is kept.
    topic_max_message_bytes: int = 8 * MAX_MESSAGE_BYTES
    # Request-log fetch sizes. `make bench` on 2 cores: 4 MiB / 16 MiB cost the broker ~0.1 us
    # of CPU per NDJSON line against ~0.25 us with 1 MiB / 4 MiB (more fetch requests), and
    # drained faster than 8 MiB / 64 MiB. A bigger message still comes whole (Kafka's KIP-74).
    fetch_partition_bytes: int = 4 * MAX_MESSAGE_BYTES
    fetch_max_bytes: int = 16 * MAX_MESSAGE_BYTES
    data_dir: Path = Path("/tmp/canarywatch")
    # Hold request-log ingestion until this file exists: lets several workers join the group
    # and split the partitions before any of them drains a backlog (used by `make bench`).
    ingest_start_file: Path | None = None
    # The actuator never applies an abort command decided longer ago than this (outcome
    # `expired`). Keep it under the API server's event TTL (1 h by default): the Events are how
    # the actuator sees that a canary was aborted and retried after the decision.
    command_ttl_s: float = 600.0
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    window: WindowSettings = field(default_factory=WindowSettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    # Verdict snapshots: a changed verdict goes out at the next pass; unchanged evidence at most
    # every `verdict_refresh_s` per env. The gate refuses (503) snapshots older than
    # `gate_max_age_s`: a stopped worker must not keep answering "pass".
    verdict_refresh_s: float = 5.0
    gate_port: int = 9110
    gate_max_age_s: float = 30.0
    gate_rate_per_s: float = 2.0  # per caller (token), token bucket
    gate_burst: int = 10

    def topic_partitions(self) -> dict[str, int]:
        t = self.topics
        return {
            t.requests: self.partitions,
            t.rollouts: self.partitions,
            t.commands: self.partitions,
            t.deadletter: 1,
        }

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


ENV_PREFIX = "CANARYWATCH_"
_PROMOTION_ENV = {
    "PASS_BETA": "beta",
    "PASS_TOL_RATIO": "tol_ratio",
    "PASS_TOL_DIFF": "tol_diff",
    "PASS_LATENCY_TOL_RATIO": "latency_tol_ratio",
    "PASS_LATENCY_TOL_DIFF": "latency_tol_diff",
}


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from CANARYWATCH_* variables (BOOTSTRAP, APP_ID, METRICS_PORT, DATA_DIR, ...)."""
    env = os.environ if environ is None else environ
    base = Settings()

    def get(name: str) -> str | None:
        return env.get(ENV_PREFIX + name)

    decisions = base.decisions
    if (objective := get("LATENCY_OBJECTIVE_MS")) is not None:
        decisions = replace(decisions, latency_objective_ms=float(objective))
    promotion = base.promotion
    for name, attr in _PROMOTION_ENV.items():
        if (value := get(name)) is not None:
            promotion = replace(promotion, **{attr: float(value)})  # type: ignore[arg-type]
    return Settings(
        bootstrap=get("BOOTSTRAP") or base.bootstrap,
        app_id=get("APP_ID") or base.app_id,
        topics=Topics(get("TOPIC_PREFIX") or base.topics.prefix),
        partitions=int(get("PARTITIONS") or base.partitions),
        metrics_port=int(get("METRICS_PORT") or base.metrics_port),
        evaluate_every_s=float(get("EVALUATE_EVERY_S") or base.evaluate_every_s),
        max_message_bytes=int(get("MAX_MESSAGE_BYTES") or base.max_message_bytes),
        fetch_partition_bytes=int(get("FETCH_PARTITION_BYTES") or base.fetch_partition_bytes),
        fetch_max_bytes=int(get("FETCH_MAX_BYTES") or base.fetch_max_bytes),
        data_dir=Path(get("DATA_DIR") or base.data_dir),
        ingest_start_file=Path(gate) if (gate := get("INGEST_START_FILE")) else None,
        command_ttl_s=float(get("COMMAND_TTL_S") or base.command_ttl_s),
        decisions=decisions,
        promotion=promotion,
        verdict_refresh_s=float(get("VERDICT_REFRESH_S") or base.verdict_refresh_s),
        gate_port=int(get("GATE_PORT") or base.gate_port),
        gate_max_age_s=float(get("GATE_MAX_AGE_S") or base.gate_max_age_s),
        gate_rate_per_s=float(get("GATE_RATE_PER_S") or base.gate_rate_per_s),
        gate_burst=int(get("GATE_BURST") or base.gate_burst),
    )


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The inverse of `settings_from_env`, to start a worker process with the same settings."""
    env = {
        ENV_PREFIX + "BOOTSTRAP": settings.bootstrap,
        ENV_PREFIX + "APP_ID": settings.app_id,
        ENV_PREFIX + "TOPIC_PREFIX": settings.topics.prefix,
        ENV_PREFIX + "PARTITIONS": str(settings.partitions),
        ENV_PREFIX + "METRICS_PORT": str(settings.metrics_port),
        ENV_PREFIX + "EVALUATE_EVERY_S": str(settings.evaluate_every_s),
        ENV_PREFIX + "MAX_MESSAGE_BYTES": str(settings.max_message_bytes),
        ENV_PREFIX + "FETCH_PARTITION_BYTES": str(settings.fetch_partition_bytes),
        ENV_PREFIX + "FETCH_MAX_BYTES": str(settings.fetch_max_bytes),
        ENV_PREFIX + "DATA_DIR": str(settings.data_dir),
        ENV_PREFIX + "COMMAND_TTL_S": str(settings.command_ttl_s),
        ENV_PREFIX + "LATENCY_OBJECTIVE_MS": str(settings.decisions.latency_objective_ms),
        ENV_PREFIX + "VERDICT_REFRESH_S": str(settings.verdict_refresh_s),
        ENV_PREFIX + "GATE_PORT": str(settings.gate_port),
        ENV_PREFIX + "GATE_MAX_AGE_S": str(settings.gate_max_age_s),
        ENV_PREFIX + "GATE_RATE_PER_S": str(settings.gate_rate_per_s),
        ENV_PREFIX + "GATE_BURST": str(settings.gate_burst),
    }
    for name, attr in _PROMOTION_ENV.items():
        env[ENV_PREFIX + name] = repr(getattr(settings.promotion, attr))
    if settings.ingest_start_file is not None:
        env[ENV_PREFIX + "INGEST_START_FILE"] = str(settings.ingest_start_file)
    return env
