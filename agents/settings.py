"""One typed settings object for every component, read from the environment or CLI flags."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from streams.decisions import DecisionSettings
from streams.events import MAX_MESSAGE_BYTES
from streams.eventtime import EventTimeSettings
from streams.fleet import FleetLimits, WindowSettings
from streams.promotion import PromotionSettings
from streams.release import FleetControl, ReleaseSettings
from streams.sizes import SizePolicy


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
    def evidence(self) -> str:
        return f"{self.prefix}.evidence"

    @property
    def verdicts(self) -> str:
        """Compacted, keyed by env: each canary's latest pass/abort/inconclusive snapshot."""
        return f"{self.prefix}.verdicts"

    @property
    def summaries(self) -> str:
        """Per-environment release evidence and cohort membership, partitioned by release."""
        return f"{self.prefix}.summaries"

    @property
    def releases(self) -> str:
        """Release verdicts (halts), keyed by release: compacted."""
        return f"{self.prefix}.releases"

    @property
    def triage(self) -> str:
        """The triage of every abort, keyed by environment: compacted."""
        return f"{self.prefix}.triage"


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "canarywatch"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4  # for the topics canarywatch creates
    # Replication factor of every topic canarywatch creates (its own and Faust's changelogs).
    # 3 for production; a single-broker development setup (the local broker, demo, bench,
    # tests) sets 1: CANARYWATCH_REPLICATION_FACTOR=1.
    replication_factor: int = 3
    metrics_port: int = 9108
    evaluate_every_s: float = 0.25
    commit_every_s: float = 1.0
    # A command send not acknowledged within this is failed and retried by a later pass
    # (with backoff); the decision counts as made only once a send is acknowledged.
    send_timeout_s: float = 10.0
    # Durable evidence (agents/evidence.py): every commit_every_s the changed rows and the
    # request-log offsets they cover go to `<prefix>.evidence` in one Kafka transaction. Off:
    # offsets are committed alone and evidence lives in memory (a restart starts from zero).
    checkpoint: bool = True
    # A transaction a killed worker left open is aborted by the broker after this.
    transaction_timeout_ms: int = 10_000
    # The one size setting: the decode limit. Topic, producer, fetch and dead-letter sizes
    # derive from it (streams/sizes.py, docs/events.md).
    max_message_bytes: int = MAX_MESSAGE_BYTES
    data_dir: Path = Path("/tmp/canarywatch")
    # Hold request-log ingestion until this file exists: lets several workers join the group
    # and split the partitions before any of them drains a backlog (used by `make bench`).
    ingest_start_file: Path | None = None
    # The actuator never applies an abort command decided longer ago than this (outcome
    # `expired`). Keep it under the API server's event TTL (1 h by default): the Events are how
    # the actuator sees that a canary was aborted and retried after the decision.
    command_ttl_s: float = 600.0
    # This cluster's name: the bridge puts it in every snapshot (and so the worker in every
    # command and decision id); the actuator applies only commands naming it. "" = unnamed.
    cluster: str = ""
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    window: WindowSettings = field(default_factory=WindowSettings)
    # Floods: canaries tracked per worker, the hold of lines that arrive before their canary's
    # snapshot, per-environment metric series exported (top by urgency; aggregates stay exact).
    limits: FleetLimits = field(default_factory=FleetLimits)
    # Event time (docs/decisions.md, "Event time"): on by default; off keeps the
    # processing-time test (a block closes at the end of a pass).
    event_time: EventTimeSettings = field(default_factory=EventTimeSettings)
    max_env_series: int = 1000
    view_batch: int = 500  # rollout-view records applied between two yields to the event loop
    # Release-level analysis (docs/decisions.md, docs/operating.md): the pooled test's settings
    # (fleet_control "ebh": per-environment aborts only in the e-BH set of the cohort), what a
    # halted release does ("abort": fan-out aborts; "notify": the verdict only), how often the
    # worker publishes changed summaries and the release agent evaluates.
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    release_policy: str = "abort"
    summary_every_s: float = 2.0
    release_evaluate_every_s: float = 1.0

    # The request-log consumer group `<app_id>-requests`: a worker killed with -9 is noticed
    # after the session timeout, then its partitions go to the others (docs/operating.md).
    request_session_timeout_ms: int = 6000
    request_heartbeat_interval_ms: int = 1500
    # Faust's own consumer group `<app_id>` (rollout states, commands).
    broker_session_timeout_s: float = 6.0
    broker_heartbeat_interval_s: float = 1.5
    # Dead letters per source topic: a token bucket (records a second, burst); past it, one
    # summary record per interval. At most this many bad lines of one message get records of
    # their own; the rest are counted and the whole message is kept as one record.
    deadletter_rate_per_s: float = 100.0
    deadletter_burst: int = 500
    deadletter_summary_every_s: float = 10.0
    deadletter_lines_per_message: int = 20
    # Codecs this process pretends not to have (tests: an unreadable batch on a real broker).
    disabled_codecs: tuple[str, ...] = ()

    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    # Verdict snapshots: a changed verdict goes out at the next pass; unchanged evidence at most
    # every `verdict_refresh_s` per env. The gate refuses (503) snapshots older than
    # `gate_max_age_s`: a stopped worker must not keep answering "pass".
    verdict_refresh_s: float = 5.0
    gate_port: int = 9110
    gate_max_age_s: float = 30.0
    gate_rate_per_s: float = 2.0  # per caller (token), token bucket
    gate_burst: int = 10

    @property
    def sizes(self) -> SizePolicy:
        return SizePolicy(self.max_message_bytes)

    @property
    def topic_max_message_bytes(self) -> int:
        return self.sizes.topic_max_message_bytes

    @property
    def producer_max_request_size(self) -> int:
        return self.sizes.producer_max_request_size

    @property
    def fetch_partition_bytes(self) -> int:
        return self.sizes.fetch_partition_bytes

    @property
    def fetch_max_bytes(self) -> int:
        return self.sizes.fetch_max_bytes

    def topic_partitions(self) -> dict[str, int]:
        t = self.topics
        return {
            t.requests: self.partitions,
            t.rollouts: self.partitions,
            t.commands: self.partitions,
            t.deadletter: 1,
        }

    def topic_config(self) -> dict[str, str]:
        """Config of canarywatch's own topics."""
        return {"max.message.bytes": str(self.topic_max_message_bytes)}

    def compacted_topic_partitions(self) -> dict[str, int]:
        """The release agent's topics (cleanup.policy=compact)."""
        t = self.topics
        n = self.partitions
        return {t.summaries: n, t.releases: n, t.triage: n}

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


# Read by settings_from_env (or elsewhere) but not always written by settings_to_env.
_EXTRA_NAMES = tuple(
    ENV_PREFIX + n
    for n in ("LATENCY_OBJECTIVE_MS", "FLEET_CONTROL", "FDR", "INGEST_START_FILE", "CLUSTER",
              "DISABLED_CODECS", "KAFKA_CDS", "CACHE")
)  # fmt: skip


_N = TypeVar("_N", int, float)


class SettingsError(ValueError):
    """A setting that cannot be used: one line naming the variable, the value and what is
    allowed (the CLI prints it and exits with code 2)."""


def _number(kind: type[_N], name: str, env: Mapping[str, str], default: _N) -> _N:
    """`raw` as `kind`, or `default` when unset; negative, non-finite and (for ports) out of
    range values are refused."""
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected {what} >= 0") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected {what} >= 0")
    # Port 0 asks the OS for a free one (the tests and the demo run that way).
    if name.endswith("_PORT") and not 0 <= value <= 65535:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected a port, 0 to 65535")
    return value


def _flag(name: str, env: Mapping[str, str], default: bool) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off (any case); `default` when unset."""
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected 1/true/yes/on or 0/false/no/off")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """CANARYWATCH_* names in the environment that no setting reads (misspellings)."""
    env = os.environ if environ is None else environ
    known = set(settings_to_env(Settings())) | set(_EXTRA_NAMES)
    return sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known)


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
    release = base.release
    if (control := get("FLEET_CONTROL")) is not None:
        release = replace(release, fleet_control=FleetControl(control))
    if (fdr := get("FDR")) is not None:
        release = replace(release, fdr=float(fdr))
    policy = get("RELEASE_POLICY") or base.release_policy
    if policy not in ("abort", "notify"):
        raise ValueError(f"CANARYWATCH_RELEASE_POLICY must be abort or notify, not {policy!r}")
    return Settings(
        bootstrap=get("BOOTSTRAP") or base.bootstrap,
        app_id=get("APP_ID") or base.app_id,
        topics=Topics(get("TOPIC_PREFIX") or base.topics.prefix),
        partitions=_number(int, "PARTITIONS", env, base.partitions),
        replication_factor=_number(int, "REPLICATION_FACTOR", env, base.replication_factor),
        metrics_port=_number(int, "METRICS_PORT", env, base.metrics_port),
        evaluate_every_s=_number(float, "EVALUATE_EVERY_S", env, base.evaluate_every_s),
        max_message_bytes=_number(int, "MAX_MESSAGE_BYTES", env, base.max_message_bytes),
        data_dir=Path(get("DATA_DIR") or base.data_dir),
        ingest_start_file=Path(gate) if (gate := get("INGEST_START_FILE")) else None,
        command_ttl_s=_number(float, "COMMAND_TTL_S", env, base.command_ttl_s),
        checkpoint=_flag("CHECKPOINT", env, base.checkpoint),
        transaction_timeout_ms=_number(
            int, "TRANSACTION_TIMEOUT_MS", env, base.transaction_timeout_ms
        ),
        commit_every_s=_number(float, "COMMIT_EVERY_S", env, base.commit_every_s),
        send_timeout_s=_number(float, "SEND_TIMEOUT_S", env, base.send_timeout_s),
        cluster=get("CLUSTER") or base.cluster,
        decisions=decisions,
        request_session_timeout_ms=_number(
            int, "REQUEST_SESSION_TIMEOUT_MS", env, base.request_session_timeout_ms
        ),
        request_heartbeat_interval_ms=_number(
            int, "REQUEST_HEARTBEAT_INTERVAL_MS", env, base.request_heartbeat_interval_ms
        ),
        broker_session_timeout_s=_number(
            float, "BROKER_SESSION_TIMEOUT_S", env, base.broker_session_timeout_s
        ),
        broker_heartbeat_interval_s=_number(
            float, "BROKER_HEARTBEAT_INTERVAL_S", env, base.broker_heartbeat_interval_s
        ),
        deadletter_rate_per_s=_number(
            float, "DEADLETTER_RATE_PER_S", env, base.deadletter_rate_per_s
        ),
        deadletter_burst=_number(int, "DEADLETTER_BURST", env, base.deadletter_burst),
        deadletter_summary_every_s=_number(
            float, "DEADLETTER_SUMMARY_EVERY_S", env, base.deadletter_summary_every_s
        ),
        deadletter_lines_per_message=_number(
            int, "DEADLETTER_LINES_PER_MESSAGE", env, base.deadletter_lines_per_message
        ),
        disabled_codecs=tuple(c for c in (get("DISABLED_CODECS") or "").split(",") if c),
        limits=FleetLimits(
            max_canaries=_number(int, "MAX_CANARIES", env, base.limits.max_canaries),
            hold_s=_number(float, "HOLD_S", env, base.limits.hold_s),
            hold_lines=_number(int, "HOLD_LINES", env, base.limits.hold_lines),
        ),
        event_time=EventTimeSettings(
            enabled=_flag("EVENT_TIME", env, base.event_time.enabled),
            slice_s=_number(float, "SLICE_S", env, base.event_time.slice_s),
            allowed_lateness_s=_number(
                float, "ALLOWED_LATENESS_S", env, base.event_time.allowed_lateness_s
            ),
            clock_skew_s=_number(float, "CLOCK_SKEW_S", env, base.event_time.clock_skew_s),
            idle_s=_number(float, "EVENT_IDLE_S", env, base.event_time.idle_s),
            max_partition_lag_s=_number(
                float, "MAX_PARTITION_LAG_S", env, base.event_time.max_partition_lag_s
            ),
        ),
        max_env_series=_number(int, "MAX_ENV_SERIES", env, base.max_env_series),
        view_batch=_number(int, "VIEW_BATCH", env, base.view_batch),
        promotion=promotion,
        verdict_refresh_s=_number(float, "VERDICT_REFRESH_S", env, base.verdict_refresh_s),
        gate_port=_number(int, "GATE_PORT", env, base.gate_port),
        gate_max_age_s=_number(float, "GATE_MAX_AGE_S", env, base.gate_max_age_s),
        gate_rate_per_s=_number(float, "GATE_RATE_PER_S", env, base.gate_rate_per_s),
        gate_burst=_number(int, "GATE_BURST", env, base.gate_burst),
        release=release,
        release_policy=policy,
        summary_every_s=_number(float, "SUMMARY_EVERY_S", env, base.summary_every_s),
        release_evaluate_every_s=_number(
            float, "RELEASE_EVALUATE_EVERY_S", env, base.release_evaluate_every_s
        ),
    )


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The inverse of `settings_from_env`, to start a worker process with the same settings."""
    env = {
        ENV_PREFIX + "BOOTSTRAP": settings.bootstrap,
        ENV_PREFIX + "APP_ID": settings.app_id,
        ENV_PREFIX + "TOPIC_PREFIX": settings.topics.prefix,
        ENV_PREFIX + "PARTITIONS": str(settings.partitions),
        ENV_PREFIX + "REPLICATION_FACTOR": str(settings.replication_factor),
        ENV_PREFIX + "METRICS_PORT": str(settings.metrics_port),
        ENV_PREFIX + "EVALUATE_EVERY_S": str(settings.evaluate_every_s),
        ENV_PREFIX + "MAX_MESSAGE_BYTES": str(settings.max_message_bytes),
        ENV_PREFIX + "DATA_DIR": str(settings.data_dir),
        ENV_PREFIX + "COMMAND_TTL_S": str(settings.command_ttl_s),
        ENV_PREFIX + "CHECKPOINT": "1" if settings.checkpoint else "0",
        ENV_PREFIX + "TRANSACTION_TIMEOUT_MS": str(settings.transaction_timeout_ms),
        ENV_PREFIX + "COMMIT_EVERY_S": str(settings.commit_every_s),
        ENV_PREFIX + "SEND_TIMEOUT_S": str(settings.send_timeout_s),
        ENV_PREFIX + "CLUSTER": settings.cluster,
        ENV_PREFIX + "LATENCY_OBJECTIVE_MS": str(settings.decisions.latency_objective_ms),
        ENV_PREFIX + "REQUEST_SESSION_TIMEOUT_MS": str(settings.request_session_timeout_ms),
        ENV_PREFIX + "REQUEST_HEARTBEAT_INTERVAL_MS": str(settings.request_heartbeat_interval_ms),
        ENV_PREFIX + "BROKER_SESSION_TIMEOUT_S": str(settings.broker_session_timeout_s),
        ENV_PREFIX + "BROKER_HEARTBEAT_INTERVAL_S": str(settings.broker_heartbeat_interval_s),
        ENV_PREFIX + "DEADLETTER_RATE_PER_S": str(settings.deadletter_rate_per_s),
        ENV_PREFIX + "DEADLETTER_BURST": str(settings.deadletter_burst),
        ENV_PREFIX + "DEADLETTER_SUMMARY_EVERY_S": str(settings.deadletter_summary_every_s),
        ENV_PREFIX + "DEADLETTER_LINES_PER_MESSAGE": str(settings.deadletter_lines_per_message),
        ENV_PREFIX + "DISABLED_CODECS": ",".join(settings.disabled_codecs),
        ENV_PREFIX + "MAX_CANARIES": str(settings.limits.max_canaries),
        ENV_PREFIX + "HOLD_S": str(settings.limits.hold_s),
        ENV_PREFIX + "HOLD_LINES": str(settings.limits.hold_lines),
        ENV_PREFIX + "EVENT_TIME": "1" if settings.event_time.enabled else "0",
        ENV_PREFIX + "SLICE_S": str(settings.event_time.slice_s),
        ENV_PREFIX + "ALLOWED_LATENESS_S": str(settings.event_time.allowed_lateness_s),
        ENV_PREFIX + "CLOCK_SKEW_S": str(settings.event_time.clock_skew_s),
        ENV_PREFIX + "EVENT_IDLE_S": str(settings.event_time.idle_s),
        ENV_PREFIX + "MAX_PARTITION_LAG_S": str(settings.event_time.max_partition_lag_s),
        ENV_PREFIX + "MAX_ENV_SERIES": str(settings.max_env_series),
        ENV_PREFIX + "VIEW_BATCH": str(settings.view_batch),
        ENV_PREFIX + "VERDICT_REFRESH_S": str(settings.verdict_refresh_s),
        ENV_PREFIX + "GATE_PORT": str(settings.gate_port),
        ENV_PREFIX + "GATE_MAX_AGE_S": str(settings.gate_max_age_s),
        ENV_PREFIX + "GATE_RATE_PER_S": str(settings.gate_rate_per_s),
        ENV_PREFIX + "GATE_BURST": str(settings.gate_burst),
        ENV_PREFIX + "FLEET_CONTROL": settings.release.fleet_control.value,
        ENV_PREFIX + "FDR": str(settings.release.fdr),
        ENV_PREFIX + "RELEASE_POLICY": settings.release_policy,
        ENV_PREFIX + "SUMMARY_EVERY_S": str(settings.summary_every_s),
        ENV_PREFIX + "RELEASE_EVALUATE_EVERY_S": str(settings.release_evaluate_every_s),
    }
    for name, attr in _PROMOTION_ENV.items():
        env[ENV_PREFIX + name] = repr(getattr(settings.promotion, attr))
    if settings.ingest_start_file is not None:
        env[ENV_PREFIX + "INGEST_START_FILE"] = str(settings.ingest_start_file)
    return env
