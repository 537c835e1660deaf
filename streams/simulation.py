"""A simulated fleet: heavy-tailed traffic, stepped canaries, injected faults, and their truth.

Pure: randomness comes in as a numpy Generator and time as an argument. `agents/simulator.py`
paces it in real time and writes it to Kafka; the scorecard compares truth with decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from streams.events import RequestLine, RolloutState, encode_request_line, env_key


class Scenario(StrEnum):
    STEADY = "steady"  # no canary during the run
    HEALTHY = "healthy"  # a canary that behaves like stable
    BAD = "bad"  # the canary's error rate jumps at fault time: must be aborted
    PLATFORM = "platform"  # stable and canary fail together at fault time: must not be aborted


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    environments: int = 100
    healthy: int = 20
    bad: int = 3
    platform: int = 2
    median_rps: float = 2.0  # per environment; log-normal spread, so a few are very busy
    rps_sigma: float = 1.2
    max_rps: float = 300.0
    min_fault_rps: float = 20.0  # faults go where traffic can show them within seconds
    base_error_rate: float = 0.001
    bad_error_rate: float = 0.5
    platform_error_rate: float = 0.3
    canary_start_s: tuple[float, float] = (2.0, 8.0)  # uniform range after the start
    fault_after_s: float = 5.0  # after the canary starts
    step_every_s: float = 15.0
    weights: tuple[int, ...] = (20, 40, 60, 80)
    latency_median_ms: float = 40.0
    rollout_name: str = "web"


@dataclass(frozen=True, slots=True)
class EnvPlan:
    namespace: str
    rollout: str
    rps: float
    scenario: Scenario
    stable_hash: str
    canary_hash: str
    canary_start: float  # absolute epoch seconds; inf for STEADY
    fault_start: float  # absolute epoch seconds; inf when no fault

    @property
    def env(self) -> str:
        return env_key(self.namespace, self.rollout)


def plan_fleet(
    settings: SimulationSettings, rng: np.random.Generator, start: float
) -> list[EnvPlan]:
    """Draw the fleet: traffic per environment, who canaries, and where faults go."""
    s = settings
    n = s.environments
    if s.healthy + s.bad + s.platform > n:
        raise ValueError("more canaries than environments")
    rps = np.minimum(rng.lognormal(math.log(s.median_rps), s.rps_sigma, n), s.max_rps)
    order = rng.permutation(n)
    faulty = order[: s.bad + s.platform]
    # Faults go to busy environments: a quiet one cannot show a fault within seconds.
    rps[faulty] = np.maximum(rps[faulty], s.min_fault_rps * rng.uniform(1.0, 3.0, faulty.size))
    scenarios = [Scenario.STEADY] * n
    for i in order[: s.bad]:
        scenarios[i] = Scenario.BAD
    for i in order[s.bad : s.bad + s.platform]:
        scenarios[i] = Scenario.PLATFORM
    for i in order[s.bad + s.platform : s.bad + s.platform + s.healthy]:
        scenarios[i] = Scenario.HEALTHY
    plans = []
    for i in range(n):
        scenario = scenarios[i]
        canary_start = (
            math.inf if scenario == Scenario.STEADY else start + rng.uniform(*s.canary_start_s)
        )
        fault = (
            canary_start + s.fault_after_s
            if scenario in (Scenario.BAD, Scenario.PLATFORM)
            else math.inf
        )
        plans.append(
            EnvPlan(
                namespace=f"env-{i:05d}",
                rollout=s.rollout_name,
                rps=float(rps[i]),
                scenario=scenario,
                stable_hash=_pod_hash(rng),
                canary_hash=_pod_hash(rng),
                canary_start=canary_start,
                fault_start=fault,
            )
        )
    return plans


def _pod_hash(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("bcdfghjklmnpqrstvwxz2456789"), 10))


@dataclass(slots=True)
class FleetSimulator:
    """Generates what the fleet does between two instants, environment by environment."""

    plans: list[EnvPlan]
    settings: SimulationSettings
    rng: np.random.Generator
    _published: dict[str, tuple[str, int | None]] = field(default_factory=dict)

    def canary_weight(self, plan: EnvPlan, now: float) -> int:
        """Percent of traffic on the canary at `now` (0 before it starts)."""
        if now < plan.canary_start:
            return 0
        step = int((now - plan.canary_start) // self.settings.step_every_s)
        return self.settings.weights[min(step, len(self.settings.weights) - 1)]

    def state(self, plan: EnvPlan, now: float) -> RolloutState:
        weight = self.canary_weight(plan, now)
        in_canary = weight > 0
        return RolloutState(
            namespace=plan.namespace,
            name=plan.rollout,
            current_pod_hash=plan.canary_hash if in_canary else plan.stable_hash,
            stable_hash=plan.stable_hash,
            step_index=self.settings.weights.index(weight) if in_canary else None,
            phase="Paused" if in_canary else "Healthy",
            canary_weight=weight if in_canary else None,
            release="2.0.0" if in_canary else "1.0.0",
            observed_at=now,
        )

    def changed_states(self, now: float) -> list[RolloutState]:
        """Snapshots of the rollouts whose canary started or stepped since the last call."""
        changed = []
        for plan in self.plans:
            state = self.state(plan, now)
            mark = (state.current_pod_hash, state.canary_weight)
            if self._published.get(plan.env) != mark:
                self._published[plan.env] = mark
                changed.append(state)
        return changed

    def all_states(self, now: float) -> list[RolloutState]:
        return [self.state(plan, now) for plan in self.plans]

    def requests(self, start: float, end: float) -> list[RequestLine]:
        """Request lines served in [start, end), timestamps spread over the interval."""
        s = self.settings
        dt = end - start
        lines: list[RequestLine] = []
        rates = np.array([p.rps for p in self.plans]) * dt
        counts = self.rng.poisson(rates)
        for plan, n in zip(self.plans, counts.tolist(), strict=True):
            if n == 0:
                continue
            weight = self.canary_weight(plan, start) / 100.0
            to_canary = self.rng.random(n) < weight
            fault = start >= plan.fault_start
            canary_rate = s.base_error_rate
            stable_rate = s.base_error_rate
            if fault and plan.scenario == Scenario.BAD:
                canary_rate = s.bad_error_rate
            elif fault and plan.scenario == Scenario.PLATFORM:
                canary_rate = stable_rate = s.platform_error_rate
            fails = self.rng.random(n) < np.where(to_canary, canary_rate, stable_rate)
            durations = self.rng.lognormal(math.log(s.latency_median_ms), 0.5, n)
            stamps = start + np.sort(self.rng.random(n)) * dt
            for i in range(n):
                canary = bool(to_canary[i])
                pod_hash = plan.canary_hash if canary else plan.stable_hash
                lines.append(
                    RequestLine(
                        ts=float(stamps[i]),
                        namespace=plan.namespace,
                        pod=f"{plan.rollout}-{pod_hash}-{i % 3}",
                        pod_hash=pod_hash,
                        status=503 if fails[i] else 200,
                        duration_ms=round(float(durations[i]), 2),
                    )
                )
        return lines


def to_messages(lines: list[RequestLine], lines_per_message: int) -> list[tuple[bytes, bytes]]:
    """Key by namespace; NDJSON of up to `lines_per_message` lines per message, as shippers do."""
    if lines_per_message <= 1:
        return [(line.namespace.encode(), encode_request_line(line)) for line in lines]
    by_env: dict[str, list[bytes]] = {}
    for line in lines:
        by_env.setdefault(line.namespace, []).append(encode_request_line(line))
    messages = []
    for namespace, encoded in by_env.items():
        for i in range(0, len(encoded), lines_per_message):
            messages.append((namespace.encode(), b"\n".join(encoded[i : i + lines_per_message])))
    return messages


@dataclass(frozen=True, slots=True)
class Outcome:
    env: str
    scenario: Scenario
    aborted: bool
    time_to_abort_s: float | None  # from the fault's start, for bad canaries


@dataclass(frozen=True, slots=True)
class Scorecard:
    outcomes: list[Outcome]

    @property
    def true_aborts(self) -> int:
        return sum(o.aborted and o.scenario == Scenario.BAD for o in self.outcomes)

    @property
    def missed(self) -> int:
        return sum(not o.aborted and o.scenario == Scenario.BAD for o in self.outcomes)

    @property
    def false_aborts(self) -> int:
        return sum(o.aborted and o.scenario != Scenario.BAD for o in self.outcomes)

    def summary(self) -> str:
        return (
            f"true_aborts={self.true_aborts} missed={self.missed} false_aborts={self.false_aborts}"
        )


def score(plans: list[EnvPlan], aborted_at: Mapping[str, float]) -> Scorecard:
    """Truth against decisions; `aborted_at` maps env key to when its abort was seen."""
    outcomes = []
    for plan in plans:
        seen = aborted_at.get(plan.env)
        delay = None
        if seen is not None and plan.scenario == Scenario.BAD:
            delay = seen - plan.fault_start
        outcomes.append(Outcome(plan.env, plan.scenario, seen is not None, delay))
    return Scorecard(outcomes)


# --- a release across many quiet environments (release-level analysis) ------------------------


class ReleaseScenario(StrEnum):
    BAD_RELEASE = "bad_release"  # the release itself is worse: every environment a little
    HEALTHY = "healthy"  # a healthy release
    BAD_CUSTOMER = "bad_customer"  # a healthy release, but this environment's own code is broken


@dataclass(frozen=True, slots=True)
class ReleaseFleetSettings:
    """Two releases side by side: `bad_release_envs` quiet environments of a release that makes
    the canary `bad_release_error_rate / base_error_rate` times worse (too few requests each for
    its own test), and `healthy_envs` environments of a healthy release, of which
    `bad_customer_envs` have a broken canary of their own (busy enough for their own test)."""

    bad_release_envs: int = 200
    healthy_envs: int = 40
    bad_customer_envs: int = 1
    quiet_requests: int = 100
    healthy_requests: int = 500
    customer_requests: int = 400
    canary_share: float = 0.2
    base_error_rate: float = 0.02
    bad_release_error_rate: float = 0.2
    customer_error_rate: float = 0.5
    rollout_prefix: str = "web"
    namespaces: int = 1  # per release: environment i is in namespace `<ns>-<i % namespaces>`


@dataclass(frozen=True, slots=True)
class ReleaseEnv:
    namespace: str
    rollout: str
    release: str
    scenario: ReleaseScenario
    stable_hash: str
    canary_hash: str
    requests: int
    canary_error_rate: float

    @property
    def env(self) -> str:
        return env_key(self.namespace, self.rollout)

    def state(self, observed_at: float, cluster: str = "") -> RolloutState:
        return RolloutState(
            namespace=self.namespace,
            name=self.rollout,
            current_pod_hash=self.canary_hash,
            stable_hash=self.stable_hash,
            step_index=0,
            phase="Paused",
            canary_weight=20,
            release=self.release,
            observed_at=observed_at,
            cluster=cluster,
        )


def plan_release_fleet(
    s: ReleaseFleetSettings, bad: tuple[str, str], healthy: tuple[str, str], tag: str
) -> list[ReleaseEnv]:
    """Environments: `bad` and `healthy` are (namespace, release); hashes are unique by `tag`."""
    envs: list[ReleaseEnv] = []

    def ns(base: str, i: int) -> str:
        return base if s.namespaces <= 1 else f"{base}-{i % s.namespaces}"

    for i in range(s.bad_release_envs):
        envs.append(
            ReleaseEnv(
                ns(bad[0], i),
                f"{s.rollout_prefix}-{i:04d}",
                bad[1],
                ReleaseScenario.BAD_RELEASE,
                f"s{tag}{i:04d}",
                f"c{tag}{i:04d}",
                s.quiet_requests,
                s.bad_release_error_rate,
            )
        )
    for i in range(s.healthy_envs):
        customer = i < s.bad_customer_envs
        envs.append(
            ReleaseEnv(
                ns(healthy[0], i),
                f"{s.rollout_prefix}-{i:04d}",
                healthy[1],
                ReleaseScenario.BAD_CUSTOMER if customer else ReleaseScenario.HEALTHY,
                f"t{tag}{i:04d}",
                f"d{tag}{i:04d}",
                s.customer_requests if customer else s.healthy_requests,
                s.customer_error_rate if customer else s.base_error_rate,
            )
        )
    return envs


def release_fleet_lines(
    envs: list[ReleaseEnv],
    s: ReleaseFleetSettings,
    rng: np.random.Generator,
    start: float,
    span_s: float,
) -> list[RequestLine]:
    """Every environment's requests, timestamped uniformly over [start, start + span_s]."""
    lines: list[RequestLine] = []
    for e in envs:
        canary = rng.random(e.requests) < s.canary_share
        rate = np.where(canary, e.canary_error_rate, s.base_error_rate)
        bad = rng.random(e.requests) < rate
        ts = np.sort(rng.uniform(start, start + span_s, e.requests))
        for t, c, b in zip(ts.tolist(), canary.tolist(), bad.tolist(), strict=True):
            pod_hash = e.canary_hash if c else e.stable_hash
            lines.append(
                RequestLine(
                    ts=t,
                    namespace=e.namespace,
                    pod=f"{e.rollout}-{pod_hash}-x",
                    pod_hash=pod_hash,
                    status=503 if b else 200,
                    duration_ms=20.0,
                )
            )
    return lines
