"""What the release-level analysis sends over Kafka: the environment summaries (worker -> release
agent), the release halts and the triage records, and their orjson codecs (bad input raises
`DecodeError`). docs/events.md describes the topics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from streams.events import MAX_MESSAGE_BYTES, DecodeError
from streams.release import Triage


@dataclass(frozen=True, slots=True)
class EnvSummary:
    """What the worker sends the release agent about one environment (cumulative: latest wins).

    loglik[signal][grid row] as `ReleaseEvidence` keeps it (row 0: the null ratio).
    """

    env: str
    release: str
    pod_hash: str
    at: float
    canary_requests: int
    stable_requests: int
    canary_bad: tuple[int, ...]  # per signal
    stable_bad: tuple[int, ...]
    window_stable_requests: int
    window_stable_bad: tuple[int, ...]
    loglik: tuple[tuple[float, ...], ...]
    stable_sum: float
    share_sum: float
    log_e: tuple[float, ...]  # per signal: ln of the environment's own e-value
    aborted: bool = False
    diff_log: tuple[tuple[float, ...], ...] = ()  # [signal][lambda]: the pooled pass's sums
    canary_sum: float = 0.0  # canary requests of closed blocks


@dataclass(frozen=True, slots=True)
class ReleaseEvidenceRecord:
    """Why a release was halted: enough to check it by hand."""

    signal: str
    canary_requests: int
    canary_bad: int
    stable_requests: int
    stable_bad: int
    statistic: float
    threshold: float
    environments: int  # in the cohort when decided
    environments_with_bad: int
    ratio_estimate: float
    pooling: str
    robust_envs: int

    def describe(self) -> str:
        return (
            f"{self.signal}: canary {self.canary_bad}/{self.canary_requests} bad, stable "
            f"{self.stable_bad}/{self.stable_requests} bad over {self.environments} environments "
            f"({self.environments_with_bad} with bad requests); pooled statistic "
            f"{self.statistic:.2f} >= {self.threshold:.2f} ({self.pooling}, without the "
            f"{self.robust_envs} strongest), likeliest ratio {self.ratio_estimate:g}x"
        )


@dataclass(frozen=True, slots=True)
class ReleaseVerdict:
    """A release halt: one decision, fanned out to every environment of the cohort in progress.

    decision_id is one per release (idempotent); `targets` are (env, pod_hash) pairs to abort.
    A later verdict with the same id may add targets (environments that joined the cohort).
    """

    decision_id: str
    release: str
    decided_at: float
    evidence: ReleaseEvidenceRecord
    targets: tuple[tuple[str, str], ...]
    reason: str = "ReleaseRegression"


@dataclass(frozen=True, slots=True)
class TriageRecord:
    env: str
    release: str
    pod_hash: str
    category: Triage
    at: float
    own_statistic: float  # ln e of the environment's own test (strongest signal)
    rest_statistic: float  # ln e against "release >= fine_ratio x worse", rest of the cohort
    release_statistic: float  # the pooled statistic of its release
    stable_failing: bool
    surge: bool

    def describe(self) -> str:
        why = {
            Triage.RELEASE: "its release is halted fleet-wide",
            Triage.PLATFORM: "stable is failing too" + (" across the fleet" if self.surge else ""),
            Triage.ENVIRONMENT: "this environment fails while the rest of its cohort shows "
            "the release is fine",
            Triage.UNDETERMINED: "no cause established yet",
        }[self.category]
        return (
            f"{self.env} ({self.release}): {self.category.value}: {why}; "
            f"own {self.own_statistic:.2f}, "
            f"rest of cohort {self.rest_statistic:.2f}, release {self.release_statistic:.2f}"
        )


def release_decision_id(release: str) -> str:
    return f"release/{release}"


def _loads(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise DecodeError("oversized", f"{len(raw)} bytes > limit {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def encode_env_summary(summary: EnvSummary) -> bytes:
    return orjson.dumps(asdict(summary))


def decode_env_summary(raw: bytes) -> EnvSummary:
    o = _loads(raw)
    try:
        return EnvSummary(
            env=str(o["env"]),
            release=str(o["release"]),
            pod_hash=str(o["pod_hash"]),
            at=float(o["at"]),
            canary_requests=int(o["canary_requests"]),
            stable_requests=int(o["stable_requests"]),
            canary_bad=tuple(int(x) for x in o["canary_bad"]),
            stable_bad=tuple(int(x) for x in o["stable_bad"]),
            window_stable_requests=int(o["window_stable_requests"]),
            window_stable_bad=tuple(int(x) for x in o["window_stable_bad"]),
            loglik=tuple(tuple(float(x) for x in row) for row in o["loglik"]),
            stable_sum=float(o["stable_sum"]),
            share_sum=float(o["share_sum"]),
            log_e=tuple(float(x) for x in o["log_e"]),
            aborted=bool(o.get("aborted", False)),
            diff_log=tuple(tuple(float(x) for x in row) for row in o.get("diff_log", ())),
            canary_sum=float(o.get("canary_sum", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("bad_field", f"env summary: {exc!r}") from None


def encode_release_verdict(verdict: ReleaseVerdict) -> bytes:
    return orjson.dumps(asdict(verdict))


def decode_release_verdict(raw: bytes) -> ReleaseVerdict:
    o = _loads(raw)
    try:
        ev = ReleaseEvidenceRecord(**o["evidence"])
        targets = tuple((str(e), str(h)) for e, h in o["targets"])
        return ReleaseVerdict(
            decision_id=str(o["decision_id"]),
            release=str(o["release"]),
            decided_at=float(o["decided_at"]),
            evidence=ev,
            targets=targets,
            reason=str(o.get("reason") or "ReleaseRegression"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("bad_field", f"release verdict: {exc!r}") from None


def encode_triage(record: TriageRecord) -> bytes:
    return orjson.dumps(asdict(record))


def decode_triage(raw: bytes) -> TriageRecord:
    o = _loads(raw)
    try:
        o["category"] = Triage(o["category"])
        return TriageRecord(**o)
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError("bad_field", f"triage: {exc!r}") from None
