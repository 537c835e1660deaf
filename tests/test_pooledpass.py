"""The release-level pass (streams.pooledpass): its guarantee by Monte Carlo (with a wrong
variant that must fail), the board's records, and the gate's adoption rule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from agents.gate import VerdictStore
from streams.events import RolloutState
from streams.pooledpass import (
    KEY_PREFIX,
    AdoptionRule,
    PassRows,
    PooledPass,
    PooledPassSettings,
    ReleasePass,
    adopt,
)
from streams.promotion import INCONCLUSIVE, PASS, SignalPass, VerdictSnapshot
from streams.release import ReleaseSettings
from streams.releaseboard import ReleaseBoard
from streams.releaseevidence import ReleaseEvidence, summary_from_rows
from streams.releaserecords import EnvSummary

BETA = 0.01
BASE = (0.001, 0.02)
SHARE = 0.2


def run_releases(
    seed: int,
    releases: int,
    envs: int,
    canary_rates: tuple[float, float],
    rate: float = 1.0,
    dt: float = 30.0,
    minutes: int = 60,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per release: the errors signal ever passed (pooled pass), both signals passed, and the
    errors signal ever passed by a naive pooled Wald bound looked at every pass (wrong)."""
    rng = np.random.default_rng(seed)
    rs = ReleaseSettings()
    s = PooledPassSettings(beta=BETA)
    rows = releases * envs
    ev = ReleaseEvidence(rows, rs, signals=2)
    pooled = PooledPass((rs.min_ratio, *rs.ratios), s)
    cohort = np.repeat(np.arange(releases, dtype=np.intp), envs)
    counts = np.zeros((4, 2, rows), dtype=np.int64)
    latched = np.zeros((2, releases), dtype=np.bool_)
    wald = np.zeros(releases, dtype=np.bool_)
    tol_diff = s.tolerances[0][1]
    for _ in range(int(minutes * 60 / dt)):
        n_c = rng.poisson(rate * dt * SHARE, rows)
        n_s = rng.poisson(rate * dt * (1 - SHARE), rows)
        x_c = np.stack([rng.binomial(n_c, p) for p in canary_rates])
        x_s = np.stack([rng.binomial(n_s, p) for p in BASE])
        ev.update(n_c, n_s, x_c, x_s)
        counts += np.stack([np.stack([n_c, n_c]), np.stack([n_s, n_s]), x_c, x_s])
        data = PassRows(ev.loglik, ev.diff_log, ev.canary_sum, cohort, counts)
        latched |= pooled.passes(data, releases)
        # The wrong variant: pooled counts, a 99 % normal-approximation upper bound on the
        # difference, looked at every pass as if each look were the only one.
        nc = np.bincount(cohort, counts[0, 0], releases)
        ns = np.bincount(cohort, counts[1, 0], releases)
        pc = np.bincount(cohort, counts[2, 0], releases) / np.maximum(nc, 1)
        ps = np.bincount(cohort, counts[3, 0], releases) / np.maximum(ns, 1)
        se = np.sqrt(pc * (1 - pc) / np.maximum(nc, 1) + ps * (1 - ps) / np.maximum(ns, 1))
        wald |= (nc > 0) & (pc - ps + 2.326 * se < tol_diff)
    both: np.ndarray = np.asarray(latched.all(axis=0))
    return latched[0], both, wald


def test_a_release_worse_than_the_tolerance_is_passed_at_most_beta_and_a_naive_bound_fails() -> (
    None
):
    reps = 1000
    # 2x the tolerance (stable's + 2 x 0.5 points) and the null's boundary (+0.5 points).
    for excess in (2.0, 1.0):
        canary = (BASE[0] + excess * 0.005, BASE[1])
        errors, _, wald = run_releases(7 + int(excess), reps, 20, canary)
        wrong = int(errors.sum())
        # beta = 1 %: 10 expected at most; 3 sigma of slack.
        assert wrong <= reps * BETA + 3 * math.sqrt(reps * BETA), (excess, wrong)
        if excess == 2.0:
            # The repeated fixed-horizon bound passes such releases far more often than beta.
            assert wald.mean() > 5 * BETA, wald.mean()


def test_a_healthy_release_of_quiet_environments_passes_through_pooling() -> None:
    # 100 environments at 0.2 req/s: alone each needs about a day; pooled, under an hour.
    _, both, _ = run_releases(3, 20, 100, BASE, rate=0.2, dt=10.0)
    assert both.mean() >= 0.9


# -- the board's records and the gate's adoption ---------------------------------------------


def _state(env: str, release: str, pod: str = "h1", in_progress: bool = True) -> RolloutState:
    ns, name = env.split("/")
    return RolloutState(
        namespace=ns,
        name=name,
        current_pod_hash=pod,
        stable_hash="h0" if in_progress else pod,
        release=release,
    )


def healthy_summaries(
    envs: int = 40, seed: int = 5, release: str = "r1", at: float = 1.0
) -> list[tuple[RolloutState, EnvSummary]]:
    """States and summaries of a healthy release's environments (~100 canary requests each)."""
    rng = np.random.default_rng(seed)
    rs = ReleaseSettings()
    ev = ReleaseEvidence(envs, rs, signals=2)
    n_c = rng.poisson(2000 * SHARE, envs)
    n_s = rng.poisson(2000 * (1 - SHARE), envs)
    for _ in range(20):  # 20 passes of ~100 requests each
        c = rng.poisson(100 * SHARE, envs)
        s = rng.poisson(100 * (1 - SHARE), envs)
        ev.update(c, s, np.stack([rng.binomial(c, p) for p in BASE]),
                  np.stack([rng.binomial(s, p) for p in BASE]))  # fmt: skip
    out = []
    for e in range(envs):
        env = f"ns{e}/app"
        counts = (int(n_c[e]), int(n_s[e]), 0, 40, 2, 160)
        summary = summary_from_rows(env, release, "h1", at, ev, e, counts, (0, 0, 0), (0.0, 0.0))
        out.append((_state(env, release), summary))
    return out


def _board_with_healthy_release(envs: int = 40, seed: int = 5) -> ReleaseBoard:
    board = ReleaseBoard(ReleaseSettings())
    for state, summary in healthy_summaries(envs, seed):
        board.apply_state(state)
        assert board.apply_summary(summary)
    return board


def test_the_board_latches_and_publishes_a_healthy_releases_pooled_pass() -> None:
    board = _board_with_healthy_release()
    out = board.evaluate(10.0)
    assert [p.release for p in out.passes] == ["r1"]
    record = out.passes[0]
    assert record.environments == 40
    assert all(s.passed for s in record.signals)
    errors = record.signals[0]
    assert errors.diff_bound is not None and errors.diff_bound < errors.tol_diff
    assert errors.statistic >= errors.threshold
    assert ReleasePass.decode(record.encode()) == record
    # Unchanged: not again before refresh_s; then again (the gate drops stale records).
    assert board.evaluate(11.0).passes == []
    assert len(board.evaluate(16.0).passes) == 1


def test_an_environment_leaving_its_release_keeps_its_evidence_frozen() -> None:
    board = _board_with_healthy_release()
    rows = board.pass_rows()
    before = board.pooled_pass.log_e(rows, 1)
    # Ten environments move on to another revision: their factors stay, frozen.
    for e in range(10):
        board.apply_state(_state(f"ns{e}/app", "r2", pod="h2"))
    after = board.pooled_pass.log_e(board.pass_rows(), 2)
    np.testing.assert_allclose(after[1][:, 0], before[1][:, 0])
    np.testing.assert_allclose(after[0][:, 0], before[0][:, 0])


def quiet_snapshot(release: str = "r1", at: float = 10.0, **own: object) -> VerdictSnapshot:
    def signal(name: str, tol_ratio: float, tol_diff: float) -> SignalPass:
        base = SignalPass(
            signal=name,
            verdict=INCONCLUSIVE,
            ratio_bound=None,
            diff_bound=None,
            tol_ratio=tol_ratio,
            tol_diff=tol_diff,
            canary_requests=40,
            canary_bad=0,
            stable_requests=160,
            stable_bad=1,
            abort_statistic=0.1,
            abort_threshold=5.3,
        )
        return replace(base, **own) if name == "errors" else base  # type: ignore[arg-type]

    return VerdictSnapshot(
        namespace="ns99",
        rollout="app",
        pod_hash="h1",
        verdict=INCONCLUSIVE,
        decided_at=at,
        since_canary_start_s=600.0,
        beta=BETA,
        signals=(signal("errors", 1.5, 0.005), signal("latency", 1.5, 0.01)),
        release=release,
    )


def test_a_quiet_environment_adopts_its_releases_pass_unless_its_own_evidence_objects() -> None:
    record = _board_with_healthy_release().evaluate(10.0).passes[0]
    lent = adopt(quiet_snapshot(), record, now=12.0)
    assert lent.verdict == PASS and lent.reason.startswith("pass (release): errors: release r1")
    assert "over 40 environments" in lent.reason and "pooled bound" in lent.reason
    assert all(s.verdict == PASS for s in lent.signals)
    # Its own test near an abort, or its own rate far above the tolerance: stays inconclusive.
    near = adopt(quiet_snapshot(abort_statistic=3.0), record, now=12.0)
    assert near.verdict == INCONCLUSIVE and "own abort statistic" in near.extra["release_pass"]
    far = adopt(quiet_snapshot(canary_bad=3), record, now=12.0)  # 7.5 % > 2 x 0.525 %
    assert far.verdict == INCONCLUSIVE and "own canary rate" in far.extra["release_pass"]
    # Another release, a stale record, another tolerance, an abort: nothing lent.
    assert adopt(quiet_snapshot(release="r2"), record, now=12.0).verdict == INCONCLUSIVE
    assert adopt(quiet_snapshot(), record, now=10.0 + 61.0).verdict == INCONCLUSIVE
    other_tol = quiet_snapshot(tol_diff=0.001)
    assert adopt(other_tol, record, now=12.0).verdict == INCONCLUSIVE
    aborted = replace(quiet_snapshot(), verdict="abort")
    assert adopt(aborted, record, now=12.0).verdict == "abort"
    assert AdoptionRule().objection(quiet_snapshot().signals[0]) == ""


def test_the_gate_store_reads_release_records_beside_snapshots() -> None:
    record = _board_with_healthy_release().evaluate(10.0).passes[0]
    store = VerdictStore("127.0.0.1:9", "t")
    store._apply(b"ns99/app", quiet_snapshot().encode())
    assert store.verdict("ns99/app", 12.0).verdict == INCONCLUSIVE  # type: ignore[union-attr]
    store._apply((KEY_PREFIX + "r1").encode(), record.encode())
    assert "ns99/app" in store.snapshots and "r1" in store.release_passes
    assert store.verdict("ns99/app", 12.0).verdict == PASS  # type: ignore[union-attr]
    store._apply((KEY_PREFIX + "r1").encode(), None)  # a tombstone removes it
    assert store.verdict("ns99/app", 12.0).verdict == INCONCLUSIVE  # type: ignore[union-attr]
