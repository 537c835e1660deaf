"""The release-level pass: quiet environments promote on their release's pooled evidence.

Pure numpy and dataclasses. docs/decisions.md ("Release-level pass") proves it; in short:

**What is pooled.** Every environment's `ReleaseEvidence` row (the worker's summary): the
conditional-binomial log likelihoods of its blocks' bad-request splits at the release grid
(``loglik[g]`` against r = 1), and the difference test's sums of `streams.promotion` over the
same blocks (``diff_log[l] = sum x_s*ln(1 + (n_c/n_s)*c_l) - l*x_c``, ``canary_sum = sum n_c``).

**The null** (per signal): "in every environment of the cohort the canary's bad rate is at least
tol_ratio x stable's **and** at least stable's + tol_diff" — the per-environment null of
`streams.promotion`, for all environments at once. Per environment e and alternative a each
factor below is a supermartingale under it (the per-environment proofs); the environments'
splits are independent given the request counts, so at a shared alternative the product over
the cohort is one, capped factors (min(M, e^cap)) too, and so is a mixture over alternatives:

    ratio:       E_r = sum_a w_a prod_e min(exp(loglik_e[a] - loglik_e[tol]), e^cap)
    difference:  E_d = sum_l w_l prod_e min(exp(diff_log_e[l] + c_l*tol_diff*canary_sum_e), e^cap)

The release passes a signal once E_r or E_d reaches 2/beta (each at beta/2): the chance that a
release inside the null ever passes is at most beta, however often it is looked at. An
environment that leaves the cohort keeps its last factor (a stopped supermartingale), so its
evidence is frozen, never dropped. The cap (1 nat) makes a pass need about ln(2/beta)/cap ~ 6
environments' evidence: one busy environment cannot pass a release for the rest.

**What it promises.** A release-level statement: under a shared effect (the release moves
every environment's rate by the same ratio, or the same difference) it is the guarantee of the
per-environment pass for that shared effect; without it, only that not every environment is
worse than the tolerance. It is no per-environment guarantee: `adopt` therefore lends the pass
only to an environment whose own evidence does not argue against it (`AdoptionRule`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from streams.promotion import (
    INCONCLUSIVE,
    LAMBDA_WEIGHTS,
    LAMBDAS,
    PASS,
    PromotionSettings,
    SignalPass,
    VerdictSnapshot,
)

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

# Verdict-topic key of a release's pooled pass: no Kubernetes name holds ':'.
KEY_PREFIX = "release:"
# Weight of r = 1 (a healthy release) among the ratio alternatives below the tolerance; the
# rest goes to the release grid's ratios below it (min_ratio, 1.25x).
WEIGHT_AT_ONE = 0.7


@dataclass(frozen=True, slots=True)
class PooledPassSettings:
    """beta, tolerances: as `PromotionSettings` (the gate compares them with the snapshot's);
    env_cap: no environment adds more than env_cap nats to any pooled factor;
    refresh_s: an unchanged release pass is republished at this period (the gate ignores one
    older than its max age)."""

    beta: float = 0.01
    tolerances: tuple[tuple[float, float], ...] = PromotionSettings().tolerances()
    env_cap: float = 1.0
    refresh_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.beta < 1.0 or not self.env_cap > 0.0:
            raise ValueError("beta in (0, 1) and env_cap > 0")

    @property
    def threshold(self) -> float:
        return math.log(2.0 / self.beta)

    @staticmethod
    def from_promotion(p: PromotionSettings, env_cap: float = 1.0) -> PooledPassSettings:
        return PooledPassSettings(beta=p.beta, tolerances=p.tolerances(), env_cap=env_cap)


@dataclass(frozen=True, slots=True)
class PassRows:
    """Per-environment pass evidence [.., row] and each row's release code (-1: none)."""

    loglik: Floats  # [signal, grid+1, row] (ReleaseEvidence.loglik)
    diff_log: Floats  # [signal, lambda, row]
    canary_sum: Floats  # [row]
    cohort: NDArray[np.intp]  # [row]
    counts: Ints  # [4, signal, row]: canary requests, stable requests, canary bad, stable bad


def _lse(v: Floats, axis: int = 0) -> Floats:
    top = np.max(v, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    out = np.log(np.sum(np.exp(v - safe), axis=axis)) + np.squeeze(safe, axis=axis)
    return np.asarray(out, dtype=np.float64)


class PooledPass:
    """The pooled e-values of every release at once, and bounds for one release on demand."""

    def __init__(self, grid_ratios: tuple[float, ...], settings: PooledPassSettings) -> None:
        """grid_ratios: the ratios of `ReleaseEvidence.loglik`'s rows (min_ratio, *ratios)."""
        self.settings = settings
        self.grid = np.asarray(grid_ratios, dtype=np.float64)
        lam = np.asarray(LAMBDAS, dtype=np.float64)
        self._c = -np.expm1(-lam)  # 1 - e^-lambda
        lw = np.asarray(LAMBDA_WEIGHTS, dtype=np.float64)
        self._log_lw = np.log(lw / lw.sum())
        self.n_lambdas = lam.size
        # Ratio alternatives: r = 1 and the grid rows below the smallest tolerance.
        self._tol_row = []
        for tol, _ in settings.tolerances:
            hits = np.flatnonzero(np.isclose(self.grid, tol))
            self._tol_row.append(int(hits[0]) if hits.size else -1)

    # -- per-environment log factors -------------------------------------------------------

    def _ratio_terms(self, rows: PassRows, t: int, b: int) -> tuple[Floats, Floats]:
        """[alternative, row] capped ln factors for null "ratio >= grid[b]", and ln weights."""
        below = np.flatnonzero(self.grid < self.grid[b])
        ll = rows.loglik[t]
        terms = [-ll[b]] + [ll[a] - ll[b] for a in below]
        w = [WEIGHT_AT_ONE] + [(1.0 - WEIGHT_AT_ONE) / max(below.size, 1)] * below.size
        if not below.size:
            w = [1.0]
        out = np.minimum(np.stack(terms), self.settings.env_cap)
        return out, np.log(np.asarray(w))

    def _diff_terms(self, rows: PassRows, t: int, d: Floats | float) -> Floats:
        """[lambda, row] capped ln factors for null "p_c - p_s >= d" (d per row or one)."""
        v = rows.diff_log[t] + self._c[:, None] * (np.asarray(d) * rows.canary_sum)
        out: Floats = np.minimum(v, self.settings.env_cap)
        return out

    # -- pooled over cohorts ---------------------------------------------------------------

    def log_e(self, rows: PassRows, n_releases: int) -> tuple[Floats, Floats]:
        """ln E of the ratio and difference nulls at the tolerances, [signal, release] each."""
        n_sig = rows.loglik.shape[0]
        member = rows.cohort >= 0
        cohort = rows.cohort[member]
        ratio = np.full((n_sig, n_releases), -np.inf)
        diff = np.zeros((n_sig, n_releases))
        for t in range(n_sig):
            tol_diff = self.settings.tolerances[t][1]
            b = self._tol_row[t]
            if b > 0:
                terms, log_w = self._ratio_terms(rows, t, b)
                sums = _cohort_sums(terms[:, member], cohort, n_releases)
                ratio[t] = _lse(sums + log_w[:, None], axis=0)
            dterms = self._diff_terms(rows, t, tol_diff)
            sums = _cohort_sums(dterms[:, member], cohort, n_releases)
            diff[t] = _lse(sums + self._log_lw[:, None], axis=0)
        return ratio, diff

    def passes(self, rows: PassRows, n_releases: int) -> Bools:
        """[signal, release]: the release's pooled evidence rejects its signal's null."""
        ratio, diff = self.log_e(rows, n_releases)
        out: Bools = np.maximum(ratio, diff) >= self.settings.threshold
        return out

    def bounds(self, rows: PassRows, code: int, t: int) -> tuple[float, float]:
        """Pooled upper bounds of release `code`, signal t: ratio (inf: none), difference
        (1.0: none). Computed on demand (for the records published)."""
        mine = rows.cohort == code
        if not mine.any():
            return math.inf, 1.0
        # The release's rows only (the bisection looks at them 40 times).
        rows = PassRows(
            rows.loglik[:, :, mine],
            rows.diff_log[:, :, mine],
            rows.canary_sum[mine],
            rows.cohort[mine],
            rows.counts[:, :, mine],
        )
        thr = self.settings.threshold
        rejected = []
        for b in range(self.grid.size):
            if self.grid[b] <= 1.0:
                rejected.append(False)
                continue
            terms, log_w = self._ratio_terms(rows, t, b)
            rejected.append(float(_lse(terms.sum(axis=1) + log_w)) >= thr)
        ratio_bound = math.inf
        for b in range(self.grid.size - 1, -1, -1):
            if not rejected[b]:
                break
            ratio_bound = float(self.grid[b])

        def e_diff(d: float) -> float:
            sums = self._diff_terms(rows, t, d).sum(axis=1)
            return float(_lse(sums + self._log_lw))

        if e_diff(1.0) < thr:
            return ratio_bound, 1.0
        lo, hi = -1.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2.0
            if e_diff(mid) >= thr:
                hi = mid
            else:
                lo = mid
        return ratio_bound, hi


def _cohort_sums(a: Floats, cohort: NDArray[np.intp], n_releases: int) -> Floats:
    """[k, release]: sums of a [k, row] by cohort."""
    k = a.shape[0]
    flat = cohort[None, :] + (np.arange(k) * n_releases)[:, None]
    out = np.bincount(flat.ravel(), weights=a.ravel(), minlength=k * n_releases)
    return np.asarray(out, dtype=np.float64).reshape(k, n_releases)


# -- the record the gate reads ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PooledSignal:
    signal: str
    passed: bool
    ratio_bound: float | None  # the release's rate is below this x stable's (None: no bound)
    diff_bound: float | None  # ... or below stable's + this (None: no bound)
    tol_ratio: float
    tol_diff: float
    statistic: float  # ln E of the stronger of the two pooled tests at the tolerance
    threshold: float
    canary_requests: int
    canary_bad: int
    stable_requests: int
    stable_bad: int


@dataclass(frozen=True, slots=True)
class ReleasePass:
    """A release's pooled pass per signal (latched: a pass stays), on `<prefix>.verdicts`
    under the key ``release:<name>``."""

    release: str
    decided_at: float
    beta: float
    environments: int  # in the pooled evidence (in progress, done or aborted)
    signals: tuple[PooledSignal, ...]
    env_cap: float = 1.0

    def passed(self, signal: str) -> PooledSignal | None:
        for s in self.signals:
            if s.signal == signal and s.passed:
                return s
        return None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["signals"] = [asdict(s) for s in self.signals]
        return out

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())

    @staticmethod
    def decode(raw: bytes) -> ReleasePass:
        data = orjson.loads(raw)
        known = set(PooledSignal.__dataclass_fields__)
        signals = tuple(
            PooledSignal(**{k: v for k, v in s.items() if k in known}) for s in data.pop("signals")
        )
        fields = set(ReleasePass.__dataclass_fields__) - {"signals"}
        return ReleasePass(signals=signals, **{k: v for k, v in data.items() if k in fields})

    def describe(self, signal: PooledSignal) -> str:
        ratio = f"{signal.ratio_bound:g}x" if signal.ratio_bound is not None else "none"
        diff = f"+{signal.diff_bound:.3%}" if signal.diff_bound is not None else "none"
        return (
            f"{signal.signal}: release {self.release} passed over {self.environments} "
            f"environments (canary {signal.canary_bad}/{signal.canary_requests} bad, stable "
            f"{signal.stable_bad}/{signal.stable_requests}); pooled bound {ratio} or {diff} "
            f"(tolerance {signal.tol_ratio:g}x or +{signal.tol_diff:.2%}), ln E "
            f"{signal.statistic:.2f} >= {signal.threshold:.2f}"
        )


# -- lending the release's pass to a quiet environment ---------------------------------------


@dataclass(frozen=True, slots=True)
class AdoptionRule:
    """When an inconclusive environment may take its release's pass: its own evidence must not
    argue against it, per signal it takes:

    - its own abort test is not near an abort: ln e < near_abort x the abort threshold
      (0.5: the e-value below sqrt(1/alpha'), 10x short of an abort at the defaults);
    - its own bad rate is not far above the tolerance: with at least far_min_bad canary bad
      requests, the canary's rate is at most far_factor x the tolerated rate
      max(tol_ratio x stable's, stable's + tol_diff).
    max_age_s: a release pass older than this is ignored (the release agent stopped)."""

    near_abort: float = 0.5
    far_factor: float = 2.0
    far_min_bad: int = 3
    max_age_s: float = 60.0

    def objection(self, own: SignalPass) -> str:
        """Why this signal's own evidence argues against the release's pass ("": none)."""
        if own.abort_statistic >= self.near_abort * own.abort_threshold:
            return (
                f"{own.signal}: own abort statistic {own.abort_statistic:.2f} >= "
                f"{self.near_abort:g} x {own.abort_threshold:.2f}"
            )
        stable = own.stable_bad / max(own.stable_requests, 1)
        allowed = max(own.tol_ratio * stable, stable + own.tol_diff)
        rate = own.canary_bad / max(own.canary_requests, 1)
        if own.canary_bad >= self.far_min_bad and rate > self.far_factor * allowed:
            return (
                f"{own.signal}: own canary rate {rate:.3%} > {self.far_factor:g} x the "
                f"tolerated {allowed:.3%}"
            )
        return ""


def adopt(
    snapshot: VerdictSnapshot,
    release_pass: ReleasePass | None,
    now: float,
    rule: AdoptionRule | None = None,
) -> VerdictSnapshot:
    """The environment's verdict with its release's pooled pass lent to it where it may be:
    `pass` ("pass (release)") when every signal passed on its own or at the release level and
    no own evidence objects; else the snapshot unchanged (an objection is noted in `extra`)."""
    rule = rule or AdoptionRule()
    if (
        snapshot.verdict != INCONCLUSIVE
        or release_pass is None
        or not snapshot.release
        or release_pass.release != snapshot.release
        or now - release_pass.decided_at > rule.max_age_s
    ):
        return snapshot
    signals: list[SignalPass] = []
    lent: list[str] = []
    for own in snapshot.signals:
        if own.verdict == PASS:
            signals.append(own)
            continue
        pooled = release_pass.passed(own.signal)
        if (
            own.verdict != INCONCLUSIVE
            or pooled is None
            or (pooled.tol_ratio, pooled.tol_diff) != (own.tol_ratio, own.tol_diff)
        ):
            return snapshot
        why = rule.objection(own)
        if why:
            extra = {**snapshot.extra, "release_pass": f"not adopted: {why}"}
            return replace(snapshot, extra=extra)
        signals.append(replace(own, verdict=PASS))
        lent.append(release_pass.describe(pooled))
    if not lent:
        return snapshot
    extra = {**snapshot.extra, "release_pass": release_pass.to_json()}
    reason = "pass (release): " + "; ".join(lent) + "; this environment's own evidence does not "
    reason += "argue against it"
    return replace(snapshot, verdict=PASS, signals=tuple(signals), reason=reason, extra=extra)


@dataclass(slots=True)
class PassLedger:
    """Latched pooled passes and publication times per release (the board keeps one)."""

    passed: dict[str, set[int]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    sent_state: dict[str, tuple[int, ...]] = field(default_factory=dict)
