"""The scenarios of `make bench-decisions` (bench/decisions.py): seeded populations of canaries
(traffic, error rates, shares, bursts, platform outages, onsets), one group per table row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

SEED = 20261126
MINUTES = 60
BASE_ERROR = 0.001
SLOW = 0.02
BUSY_RPS, QUIET_RPS = 100.0, 0.2
HEALTHY = 20_000  # half busy, half quiet
PER_SCENARIO = 1_000
PLATFORM = 1_000  # per environment kind
PLATFORM_ERROR = 0.05
PLATFORM_MINUTES = (20, 30)
STEPS = (0.05, 0.20, 0.50)  # canary share per 20-minute step
REGRESSIONS: tuple[tuple[str, float], ...] = (
    ("2x", 2 * BASE_ERROR),
    ("5x", 5 * BASE_ERROR),
    ("10x", 10 * BASE_ERROR),
    ("broken", 0.10),
)
SHARES = (0.05, 0.20, 0.50)
ENVS = (("busy", BUSY_RPS), ("quiet", QUIET_RPS))
JUDGES = ("canarywatch", "argo 0.5%", "argo docs", "kayenta", "oracle")

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]


# Traffic shaped like production's (issue 11). Bursts replace independent errors on both arms
# at the same mean rate: a burst starts per request with probability base/mean size, on the arm
# that served it, and its bad requests (retries: extra requests) come at `speed` per second.
BURSTS: dict[str, tuple[int, int, int]] = {  # name: (min size, max size, per second)
    "bursts 2-5": (2, 5, 5),
    "bursts 5-50": (5, 50, 10),
}
# Sticky retry storms, on top of the base: a client retrying at once, 20 retries in 2 s.
STORM_SIZE, STORM_SPEED, STORMS_PER_HOUR = 20, 10, 2
CLUSTERED = 2_000  # healthy canaries per clustered row
WARMUP = 2_000  # healthy canaries per warm-up row
WARMUP_SLOW = 0.30
SHARED = 1_000
SHARED_CANARY, SHARED_STABLE, SHARED_ONSET_S = 0.10, 0.07, 300
BUSY_BASE = 0.02  # a busy service's high error base rate
LATE = 2_000  # late-onset 10x regressions (and as many from the start), busy, 5 % share
LATE_ONSET_S = 3600
LATE_MINUTES = 90


@dataclass(frozen=True, slots=True)
class Group:
    kind: str  # healthy | clustered | regression | platform | warmup | shared | late
    env: str
    regression: str
    share: float  # 0 for the stepped schedule
    rows: slice
    base: float = BASE_ERROR


@dataclass(slots=True)
class Population:
    rps: Floats
    shares: Floats  # [rows, 3]: share per 20-minute step
    canary_error: Floats  # from `onset` on
    platform: NDArray[np.bool_]
    groups: list[Group]
    base: Floats  # both arms' error rate before the onset (stable's throughout)
    stable_after: Floats  # stable's error rate from the onset on
    onset: Floats  # seconds after the canary's start
    burst: NDArray[np.int64]  # 0 none, 1 + index in BURSTS, len(BURSTS) + 1 storms
    warmup: Floats  # seconds of WARMUP_SLOW after each step's start (new pods)
    canary_slow: Floats
    storm_speed: NDArray[np.int64]
    minutes: int = MINUTES

    @property
    def size(self) -> int:
        return int(self.rps.size)


def population_from_spec(groups_spec: list[dict[str, object]], minutes: int) -> Population:
    cols: dict[str, list[Floats]] = {
        k: []
        for k in (
            "rps",
            "shares",
            "error",
            "platform",
            "base",
            "after",
            "onset",
            "burst",
            "warmup",
            "slow",
            "storm_speed",
        )
    }
    groups: list[Group] = []
    start = 0
    for spec in groups_spec:
        n = int(spec["n"])  # type: ignore[call-overload]
        share = float(spec.get("share", 0.0))  # type: ignore[arg-type]
        base = float(spec.get("base", BASE_ERROR))  # type: ignore[arg-type]
        kind = str(spec["kind"])
        cols["rps"].append(np.full(n, float(spec["rps"])))  # type: ignore[arg-type]
        cols["shares"].append(np.tile(np.asarray(STEPS if share == 0 else (share,) * 3), (n, 1)))
        cols["error"].append(np.full(n, float(spec.get("p", base))))  # type: ignore[arg-type]
        cols["platform"].append(np.full(n, float(kind == "platform")))
        cols["base"].append(np.full(n, base))
        cols["after"].append(np.full(n, float(spec.get("stable_after", base))))  # type: ignore[arg-type]
        cols["onset"].append(np.full(n, float(spec.get("onset", 0.0))))  # type: ignore[arg-type]
        cols["burst"].append(np.full(n, float(spec.get("burst", 0))))  # type: ignore[arg-type]
        cols["warmup"].append(np.full(n, float(spec.get("warmup", 0.0))))  # type: ignore[arg-type]
        cols["slow"].append(np.full(n, float(spec.get("slow", SLOW))))  # type: ignore[arg-type]
        speed = float(spec.get("storm_speed", STORM_SPEED))  # type: ignore[arg-type]
        cols["storm_speed"].append(np.full(n, speed))
        groups.append(
            Group(
                kind,
                str(spec["env"]),
                str(spec.get("regression", "none")),
                share,
                slice(start, start + n),
                base,
            )
        )
        start += n
    c = {k: np.concatenate(v) for k, v in cols.items()}
    return Population(
        rps=c["rps"],
        shares=c["shares"],
        canary_error=c["error"],
        platform=c["platform"] > 0,
        groups=groups,
        base=c["base"],
        stable_after=c["after"],
        onset=c["onset"],
        burst=c["burst"].astype(np.int64),
        warmup=c["warmup"],
        canary_slow=c["slow"],
        storm_speed=c["storm_speed"].astype(np.int64),
        minutes=minutes,
    )


def build_population() -> Population:
    spec: list[dict[str, object]] = []
    for env, rate in ENVS:
        spec.append(dict(kind="healthy", env=env, n=HEALTHY // 2, rps=rate))
    for env, rate in ENVS:
        for name, p in REGRESSIONS:
            for share in SHARES:
                spec.append(
                    dict(
                        kind="regression",
                        env=env,
                        regression=name,
                        share=share,
                        n=PER_SCENARIO,
                        rps=rate,
                        p=p,
                    )
                )
    for env, rate in ENVS:
        spec.append(dict(kind="platform", env=env, n=PLATFORM, rps=rate))
    # New rows (issue 11).
    for i, name in enumerate(BURSTS):
        spec.append(
            dict(
                kind="clustered",
                env="busy",
                regression=name,
                n=CLUSTERED,
                rps=BUSY_RPS,
                burst=i + 1,
            )
        )
    spec.append(
        dict(
            kind="clustered",
            env="busy",
            regression="retry storms",
            n=CLUSTERED,
            rps=BUSY_RPS,
            burst=len(BURSTS) + 1,
        )
    )
    for base, ratio in ((BASE_ERROR, 1.5), (BUSY_BASE, 1.5), (BUSY_BASE, 2.0)):
        spec.append(
            dict(
                kind="regression",
                env="busy",
                regression=f"{ratio:g}x",
                share=0.2,
                n=PER_SCENARIO,
                rps=BUSY_RPS,
                p=ratio * base,
                base=base,
            )
        )
    for seconds in (10.0, 60.0):
        spec.append(
            dict(
                kind="warmup",
                env="busy",
                regression=f"{seconds:.0f}s warm-up",
                n=WARMUP,
                rps=BUSY_RPS,
                warmup=seconds,
            )
        )
    spec.append(
        dict(
            kind="warmup",
            env="busy",
            regression="stays slow",
            n=PER_SCENARIO,
            rps=BUSY_RPS,
            slow=WARMUP_SLOW,
        )
    )
    spec.append(
        dict(
            kind="shared",
            env="busy",
            regression="shared",
            share=0.2,
            n=SHARED,
            rps=BUSY_RPS,
            p=SHARED_CANARY,
            stable_after=SHARED_STABLE,
            onset=SHARED_ONSET_S,
        )
    )
    return population_from_spec(spec, MINUTES)


def build_late_population() -> Population:
    spec: list[dict[str, object]] = [
        dict(
            kind="late",
            env="busy",
            regression="10x at 60 min",
            share=0.05,
            n=LATE,
            rps=BUSY_RPS,
            p=10 * BASE_ERROR,
            onset=LATE_ONSET_S,
        ),
        dict(
            kind="late",
            env="busy",
            regression="10x from start",
            share=0.05,
            n=LATE,
            rps=BUSY_RPS,
            p=10 * BASE_ERROR,
        ),
    ]
    return population_from_spec(spec, LATE_MINUTES)
