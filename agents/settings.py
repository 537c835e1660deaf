"""One typed settings object for every component, read from the environment (validated by
pydantic-settings: a bad value is one line naming the variable, the value and what is allowed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from agents.kafka_auth import MECHANISMS, PROTOCOLS, KafkaAuth
from streams.decisions import DecisionSettings
from streams.events import MAX_MESSAGE_BYTES
from streams.eventtime import EventTimeSettings
from streams.fleet import FleetLimits, WindowSettings
from streams.promotion import PromotionSettings
from streams.release import FleetControl, ReleaseSettings
from streams.rollouts import POLICY_ANNOTATION, Action
from streams.sizes import SizePolicy

_T = TypeVar("_T")


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
    # What the actuator does with a bad canary: abort, pause or dry-run (docs/operating.md,
    # "Policies"); a Rollout's `canarywatch.io/policy` annotation overrides it.
    action_policy: Action = Action.ABORT
    # A command deferred (retry budget spent) more than this many times goes to the dead-letter
    # topic with the API's last answer, and is committed.
    max_deferrals: int = 3
    # Commands of one commands-topic partition the actuator handles at once (different Rollouts;
    # one Rollout's commands stay in order), and its threads for API calls.
    actuator_concurrency: int = 16
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
    # TLS and SASL of every Kafka client (agents/kafka_auth.py); PLAINTEXT by default.
    kafka: KafkaAuth = field(default_factory=KafkaAuth)

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
# Read elsewhere (agents/localkafka.py: the broker's cache), not settings of a component.
_OTHER_NAMES = tuple(ENV_PREFIX + n for n in ("KAFKA_CDS", "CACHE"))


class SettingsError(ValueError):
    """A setting that cannot be used: one line naming the variable, the value and what is
    allowed (the CLI prints it and exits with code 2)."""


# What each kind of value allows, as the one-line errors say it. Unset or empty: the default.
_WHOLE = "a whole number >= 0"
_NUMBER = "a number >= 0"
_PORT = "a port, 0 to 65535"
_FLAG = "1/true/yes/on or 0/false/no/off"
_FRACTION = "a number between 0 and 1 (exclusive)"

Whole = Annotated[int | None, Field(ge=0, json_schema_extra={"allowed": _WHOLE})]
Number = Annotated[
    float | None, Field(ge=0, allow_inf_nan=False, json_schema_extra={"allowed": _NUMBER})
]
Fraction = Annotated[
    float | None, Field(gt=0, lt=1, allow_inf_nan=False, json_schema_extra={"allowed": _FRACTION})
]
Port = Annotated[int | None, Field(ge=0, le=65535, json_schema_extra={"allowed": _PORT})]
Flag = Annotated[bool | None, Field(json_schema_extra={"allowed": _FLAG})]
Text = Annotated[str | None, Field(json_schema_extra={"allowed": "text"})]
File = Annotated[Path | None, Field(json_schema_extra={"allowed": "a path"})]


def _choice(*values: str) -> Any:
    return Annotated[
        Literal[values] | None,
        Field(json_schema_extra={"allowed": "one of " + ", ".join(values)}),
    ]


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("canarywatch_environ", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, on the mapping `settings_from_env` was given (tests, child
    processes' environments) instead of os.environ."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENVIRON.get()
        if env is None:
            return super()._load_env_vars()
        return {k.lower(): v for k, v in env.items() if v != ""}


class EnvSettings(BaseSettings):
    """Every CANARYWATCH_* variable, typed and validated (pydantic-settings). None: unset,
    the `Settings` default applies (the one place defaults live)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    bootstrap: Text = Field(
        default=None, description="Kafka bootstrap servers, host:port[,host:port]"
    )
    app_id: Text = Field(default=None, description="Faust app id and consumer group prefix")
    topic_prefix: Text = Field(
        default=None, description="topics are <prefix>.requests, .rollouts, ..."
    )
    partitions: Whole = Field(
        default=None, description="partitions of the topics canarywatch creates"
    )
    replication_factor: Whole = Field(
        default=None, description="of every topic created (1: one broker)"
    )
    metrics_port: Port = Field(
        default=None, description="/metrics, /healthz, /readyz (0: any free)"
    )
    evaluate_every_s: Number = Field(default=None, description="seconds between evaluation passes")
    commit_every_s: Number = Field(default=None, description="seconds between evidence checkpoints")
    send_timeout_s: Number = Field(default=None, description="an unacknowledged command send fails")
    checkpoint: Flag = Field(default=None, description="durable evidence in <prefix>.evidence")
    transaction_timeout_ms: Whole = Field(default=None, description="Kafka transaction timeout")
    max_message_bytes: Whole = Field(default=None, description="decode limit; other sizes derive")
    data_dir: File = Field(default=None, description="the worker's local state")
    ingest_start_file: File = Field(
        default=None, description="hold ingestion until this file exists"
    )
    command_ttl_s: Number = Field(default=None, description="the actuator skips older commands")
    cluster: Text = Field(default=None, description="this cluster's name (bridge, actuator)")
    latency_objective_ms: Number = Field(
        default=None, description="a request slower than this is bad"
    )
    max_slice_s: Number = Field(
        default=None, description="> 0: longest burst counted once; the abort floor scales with it"
    )
    max_canaries: Whole = Field(default=None, description="canaries tracked per worker")
    max_waiting: Whole = Field(
        default=None, description="refused canaries waiting for their lines, per worker"
    )
    hold_s: Number = Field(default=None, description="hold lines that come before their snapshot")
    hold_lines: Whole = Field(default=None, description="... at most this many")
    event_time: Flag = Field(default=None, description="judge in event time (docs/decisions.md)")
    slice_s: Number = Field(default=None, description="event-time slice")
    allowed_lateness_s: Number = Field(default=None, description="event-time lateness allowed")
    clock_skew_s: Number = Field(default=None, description="future timestamps allowed")
    event_idle_s: Number = Field(default=None, description="an idle partition's watermark advances")
    max_partition_lag_s: Number = Field(
        default=None, description="event time: the slowest partition held at most this far back"
    )
    max_env_series: Whole = Field(default=None, description="per-canary metric series exported")
    view_batch: Whole = Field(default=None, description="rollout-view records per event-loop yield")
    request_session_timeout_ms: Whole = Field(
        default=None, description="request-log consumer group"
    )
    request_heartbeat_interval_ms: Whole = Field(
        default=None, description="request-log consumer group"
    )
    broker_session_timeout_s: Number = Field(default=None, description="Faust's consumer group")
    broker_heartbeat_interval_s: Number = Field(default=None, description="Faust's consumer group")
    deadletter_rate_per_s: Number = Field(
        default=None, description="dead letters a second per topic"
    )
    deadletter_burst: Whole = Field(default=None, description="dead-letter burst")
    deadletter_summary_every_s: Number = Field(default=None, description="past the rate: summaries")
    deadletter_lines_per_message: Whole = Field(
        default=None, description="bad lines kept per message"
    )
    disabled_codecs: Text = Field(
        default=None, description="codecs to pretend missing (tests), a,b"
    )
    pass_beta: Fraction = Field(default=None, description="chance a worse canary ever passes")
    pass_tol_ratio: Number = Field(default=None, description="errors: pass below this x stable's")
    pass_tol_diff: Number = Field(default=None, description="errors: or below stable's + this")
    pass_latency_tol_ratio: Number = Field(default=None, description="latency: the same")
    pass_latency_tol_diff: Number = Field(default=None, description="latency: the same")
    verdict_refresh_s: Number = Field(default=None, description="unchanged verdicts republished")
    gate_port: Port = Field(default=None, description="the gate's port")
    gate_max_age_s: Number = Field(default=None, description="the gate refuses older verdicts")
    gate_rate_per_s: Number = Field(default=None, description="gate requests a second per caller")
    gate_burst: Whole = Field(default=None, description="gate burst per caller")
    fleet_control: _choice(*(c.value for c in FleetControl)) = Field(  # type: ignore[valid-type]
        default=None, description="per-environment aborts: each alone, or e-BH within the release"
    )
    fdr: Fraction = Field(default=None, description="e-BH false discovery rate")
    action_policy: _choice(*(a.value for a in Action)) = Field(  # type: ignore[valid-type]
        default=None,
        description=f"what an abort decision does; a Rollout's {POLICY_ANNOTATION} overrides it",
    )
    max_deferrals: Whole = Field(
        default=None, description="a command deferred more times is dead-lettered"
    )
    actuator_concurrency: Whole = Field(
        default=None, description="commands of a partition the actuator handles at once"
    )
    release_policy: _choice("abort", "notify") = Field(  # type: ignore[valid-type]
        default=None, description="what a halted release does"
    )
    summary_every_s: Number = Field(default=None, description="release summaries published")
    release_evaluate_every_s: Number = Field(default=None, description="release agent pass")
    security_protocol: _choice(*PROTOCOLS) = Field(  # type: ignore[valid-type]
        default=None, description="Kafka: TLS and/or SASL"
    )
    ssl_cafile: File = Field(default=None, description="Kafka TLS: CA file (default: system CAs)")
    ssl_certfile: File = Field(
        default=None, description="Kafka TLS: client certificate (mutual TLS)"
    )
    ssl_keyfile: File = Field(default=None, description="Kafka TLS: client key")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="Kafka TLS: client key password (secret)"
    )
    sasl_mechanism: _choice(*MECHANISMS) = Field(  # type: ignore[valid-type]
        default=None, description="Kafka SASL mechanism"
    )
    sasl_username: Text = Field(default=None, description="Kafka SASL user name")
    sasl_password: SecretStr | None = Field(
        default=None, description="Kafka SASL password (secret)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (_MappingEnvSource(settings_cls),)


SECRETS = frozenset(
    ENV_PREFIX + name.upper()
    for name, f in EnvSettings.model_fields.items()
    if f.annotation is not None and "SecretStr" in str(f.annotation)
)


def _allowed(name: str) -> str:
    extra = EnvSettings.model_fields[name].json_schema_extra
    return str(extra.get("allowed", "")) if isinstance(extra, dict) else "text"


def setting_names() -> list[str]:
    return [ENV_PREFIX + name.upper() for name in EnvSettings.model_fields]


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """CANARYWATCH_* names in the environment that no setting reads (misspellings)."""
    env = os.environ if environ is None else environ
    known = set(setting_names()) | set(_OTHER_NAMES)
    return sorted(n for n in env if n.startswith(ENV_PREFIX) and n not in known)


def load_env(environ: Mapping[str, str] | None = None) -> EnvSettings:
    """The variables, validated; the first bad one raises SettingsError in one line."""
    token = _ENVIRON.set(environ)
    try:
        return EnvSettings()
    except ValidationError as error:
        first = error.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        raw = first.get("input")
        if name in SECRETS or ENV_PREFIX + name.upper() in SECRETS:
            raw = "***"
        raise SettingsError(
            f"{ENV_PREFIX}{name.upper()}={raw!r}: expected {_allowed(name)}"
        ) from None
    finally:
        _ENVIRON.reset(token)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from CANARYWATCH_* variables (BOOTSTRAP, APP_ID, METRICS_PORT, DATA_DIR, ...):
    unset ones keep `Settings()`'s defaults."""
    e = load_env(environ)
    base = Settings()

    def pick(value: _T | None, default: _T) -> _T:
        return default if value is None else value

    promotion = replace(
        base.promotion,
        **{
            attr: getattr(e, name.lower())
            for name, attr in _PROMOTION_ENV.items()
            if getattr(e, name.lower()) is not None
        },
    )
    k = base.kafka
    return Settings(
        bootstrap=pick(e.bootstrap, base.bootstrap),
        app_id=pick(e.app_id, base.app_id),
        topics=Topics(pick(e.topic_prefix, base.topics.prefix)),
        partitions=pick(e.partitions, base.partitions),
        replication_factor=pick(e.replication_factor, base.replication_factor),
        metrics_port=pick(e.metrics_port, base.metrics_port),
        evaluate_every_s=pick(e.evaluate_every_s, base.evaluate_every_s),
        max_message_bytes=pick(e.max_message_bytes, base.max_message_bytes),
        data_dir=pick(e.data_dir, base.data_dir),
        ingest_start_file=e.ingest_start_file,
        command_ttl_s=pick(e.command_ttl_s, base.command_ttl_s),
        checkpoint=pick(e.checkpoint, base.checkpoint),
        transaction_timeout_ms=pick(e.transaction_timeout_ms, base.transaction_timeout_ms),
        commit_every_s=pick(e.commit_every_s, base.commit_every_s),
        send_timeout_s=pick(e.send_timeout_s, base.send_timeout_s),
        cluster=pick(e.cluster, base.cluster),
        decisions=replace(
            base.decisions,
            latency_objective_ms=pick(e.latency_objective_ms, base.decisions.latency_objective_ms),
            max_slice_s=pick(e.max_slice_s, base.decisions.max_slice_s),
        ),
        action_policy=Action(pick(e.action_policy, base.action_policy.value)),
        max_deferrals=pick(e.max_deferrals, base.max_deferrals),
        actuator_concurrency=pick(e.actuator_concurrency, base.actuator_concurrency),
        request_session_timeout_ms=pick(
            e.request_session_timeout_ms, base.request_session_timeout_ms
        ),
        request_heartbeat_interval_ms=pick(
            e.request_heartbeat_interval_ms, base.request_heartbeat_interval_ms
        ),
        broker_session_timeout_s=pick(e.broker_session_timeout_s, base.broker_session_timeout_s),
        broker_heartbeat_interval_s=pick(
            e.broker_heartbeat_interval_s, base.broker_heartbeat_interval_s
        ),
        deadletter_rate_per_s=pick(e.deadletter_rate_per_s, base.deadletter_rate_per_s),
        deadletter_burst=pick(e.deadletter_burst, base.deadletter_burst),
        deadletter_summary_every_s=pick(
            e.deadletter_summary_every_s, base.deadletter_summary_every_s
        ),
        deadletter_lines_per_message=pick(
            e.deadletter_lines_per_message, base.deadletter_lines_per_message
        ),
        disabled_codecs=tuple(c for c in (e.disabled_codecs or "").split(",") if c),
        limits=FleetLimits(
            max_canaries=pick(e.max_canaries, base.limits.max_canaries),
            max_waiting=pick(e.max_waiting, base.limits.max_waiting),
            hold_s=pick(e.hold_s, base.limits.hold_s),
            hold_lines=pick(e.hold_lines, base.limits.hold_lines),
        ),
        event_time=EventTimeSettings(
            enabled=pick(e.event_time, base.event_time.enabled),
            slice_s=pick(e.slice_s, base.event_time.slice_s),
            allowed_lateness_s=pick(e.allowed_lateness_s, base.event_time.allowed_lateness_s),
            clock_skew_s=pick(e.clock_skew_s, base.event_time.clock_skew_s),
            idle_s=pick(e.event_idle_s, base.event_time.idle_s),
            max_partition_lag_s=pick(e.max_partition_lag_s, base.event_time.max_partition_lag_s),
        ),
        max_env_series=pick(e.max_env_series, base.max_env_series),
        view_batch=pick(e.view_batch, base.view_batch),
        promotion=promotion,
        verdict_refresh_s=pick(e.verdict_refresh_s, base.verdict_refresh_s),
        gate_port=pick(e.gate_port, base.gate_port),
        gate_max_age_s=pick(e.gate_max_age_s, base.gate_max_age_s),
        gate_rate_per_s=pick(e.gate_rate_per_s, base.gate_rate_per_s),
        gate_burst=pick(e.gate_burst, base.gate_burst),
        release=replace(
            base.release,
            fleet_control=FleetControl(pick(e.fleet_control, base.release.fleet_control.value)),
            fdr=pick(e.fdr, base.release.fdr),
        ),
        release_policy=pick(e.release_policy, base.release_policy),
        summary_every_s=pick(e.summary_every_s, base.summary_every_s),
        release_evaluate_every_s=pick(e.release_evaluate_every_s, base.release_evaluate_every_s),
        kafka=KafkaAuth(
            security_protocol=pick(e.security_protocol, k.security_protocol),
            ssl_cafile=e.ssl_cafile,
            ssl_certfile=e.ssl_certfile,
            ssl_keyfile=e.ssl_keyfile,
            ssl_key_password=e.ssl_key_password,
            sasl_mechanism=pick(e.sasl_mechanism, k.sasl_mechanism),
            sasl_username=pick(e.sasl_username, k.sasl_username),
            sasl_password=e.sasl_password,
        ),
    )


def settings_help() -> str:
    """Every setting with what it allows, its default and what it does (`worker --help`)."""
    defaults = settings_to_env(Settings())
    lines = ["settings (environment variables; unset or empty: the default):"]
    for name, f in EnvSettings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = defaults.get(env, "")
        lines.append(
            f"  {env}  {_allowed(name)}; default {default or '(none)'}\n      {f.description or ''}"
        )
    return "\n".join(lines)


def settings_line(settings: Settings) -> str:
    """The start-up line: every effective setting, secrets masked."""
    env = settings_to_env(settings)
    return "settings: " + " ".join(
        f"{name[len(ENV_PREFIX) :]}={'***' if name in SECRETS and value else value}"
        for name, value in sorted(env.items())
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
        ENV_PREFIX + "ACTION_POLICY": settings.action_policy.value,
        ENV_PREFIX + "MAX_DEFERRALS": str(settings.max_deferrals),
        ENV_PREFIX + "ACTUATOR_CONCURRENCY": str(settings.actuator_concurrency),
        ENV_PREFIX + "LATENCY_OBJECTIVE_MS": str(settings.decisions.latency_objective_ms),
        ENV_PREFIX + "MAX_SLICE_S": str(settings.decisions.max_slice_s),
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
        ENV_PREFIX + "MAX_WAITING": str(settings.limits.max_waiting),
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
    k = settings.kafka
    env[ENV_PREFIX + "SECURITY_PROTOCOL"] = k.security_protocol
    env[ENV_PREFIX + "SASL_MECHANISM"] = k.sasl_mechanism
    env[ENV_PREFIX + "SASL_USERNAME"] = k.sasl_username
    for name, path in (("SSL_CAFILE", k.ssl_cafile), ("SSL_CERTFILE", k.ssl_certfile),
                       ("SSL_KEYFILE", k.ssl_keyfile)):  # fmt: skip
        if path is not None:
            env[ENV_PREFIX + name] = str(path)
    # A child process needs the secrets to connect (`settings_line` masks them).
    for name, secret in (("SSL_KEY_PASSWORD", k.ssl_key_password),
                         ("SASL_PASSWORD", k.sasl_password)):  # fmt: skip
        if secret is not None:
            env[ENV_PREFIX + name] = secret.get_secret_value()
    return env
