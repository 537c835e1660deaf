"""Release-level analysis: the pooled test's guarantee by Monte Carlo (and deliberately wrong
variants that must fail it), platform invariance, e-BH, triage, the board and its codecs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from streams.events import DecodeError, RolloutState
from streams.pooledhalt import FleetArrays, ebh, pool
from streams.release import FleetControl, Pooling, ReleaseSettings, Triage
from streams.releaseboard import ReleaseBoard
from streams.releaseevidence import ReleaseEvidence, summary_from_rows
from streams.releaserecords import (
    EnvSummary,
    decode_env_summary,
    decode_release_verdict,
    decode_triage,
    encode_env_summary,
    encode_release_verdict,
    encode_triage,
    release_decision_id,
)
from streams.triage import TRIAGE_ORDER, triage

Z1 = np.zeros((1, 1), dtype=np.int64)


def arrays(ev: ReleaseEvidence, cohort: np.ndarray, log_e: np.ndarray | None = None) -> FleetArrays:
    n = ev.capacity
    z = np.zeros(n, dtype=np.int64)
    zs = np.zeros((ev.signals, n), dtype=np.int64)
    return FleetArrays(
        loglik=ev.loglik,
        stable_sum=ev.stable_sum,
        share_sum=ev.share_sum,
        log_e=np.zeros((ev.signals, n)) if log_e is None else log_e,
        canary_requests=z,
        stable_requests=z,
        canary_bad=zs,
        stable_bad=zs,
        window_stable_requests=z,
        window_stable_bad=zs,
        cohort=cohort.astype(np.intp),
        aborted=np.zeros(n, dtype=np.bool_),
    )


def false_halt_rate(
    settings: ReleaseSettings,
    *,
    true_ratio: float,
    reps: int = 400,
    envs: int = 40,
    passes: int = 120,
    stable_rate: float = 0.03,
    seed: int = 1,
    double_count: bool = False,
    incident: bool = False,
) -> float:
    """Share of releases (cohorts of `envs`) whose pooled statistic ever reaches the threshold,
    looked at after every pass. Canary shares differ by environment and step up over time;
    traffic is heavy-tailed. double_count: the deliberately wrong agent that adds every
    (cumulative) summary to the previous ones instead of replacing it."""
    rng = np.random.default_rng(seed)
    n = reps * envs
    ev = ReleaseEvidence(n, settings)
    cohort = np.repeat(np.arange(reps), envs)
    rate = 5.0 * rng.pareto(1.5, n) + 1.0
    base_share = rng.uniform(0.05, 0.3, n)
    crossed = np.zeros(reps, dtype=np.bool_)
    summed = np.zeros_like(ev.loglik)
    for i in range(passes):
        share = np.minimum(base_share * (1 + i // 40), 0.9)
        p_s = np.full(n, stable_rate)
        if incident:  # both arms fail alike in a third of the environments, for a while
            hit = (np.arange(n) % 3 == 0) & (30 <= i < 60)
            p_s = np.where(hit, 0.3, p_s)
        p_c = np.minimum(p_s * true_ratio, 1.0)
        n_c = rng.poisson(rate * share)
        n_s = rng.poisson(rate * (1 - share))
        ev.update(n_c, n_s, rng.binomial(n_c, p_c)[None], rng.binomial(n_s, p_s)[None])
        fleet = arrays(ev, cohort)
        if double_count:
            summed += ev.loglik
            fleet = replace(fleet, loglik=summed)
        crossed |= pool(fleet, reps, settings).crossed
    return float(crossed.mean())


ALPHA = 0.1
RAW = ReleaseSettings(alpha=ALPHA, signals=1, min_diff=0.0, env_cap=math.inf, robust_envs=0)


def test_pooled_test_false_halts_stay_below_alpha_at_the_null_boundary() -> None:
    # Every environment's canary exactly min_ratio x worse: the hardest null there is.
    rate = false_halt_rate(RAW, true_ratio=RAW.min_ratio)
    assert rate <= ALPHA, rate


def test_a_wrong_null_fails_the_same_check() -> None:
    # Testing against r = 1 while the truth is 1.25x everywhere: the check must catch it.
    wrong = replace(RAW, min_ratio=1.0, ratios=(1.5, 2.0, 3.0, 5.0, 8.0, 16.0, 64.0))
    assert false_halt_rate(wrong, true_ratio=1.25) > 3 * ALPHA


def test_double_counting_cumulative_summaries_fails_the_same_check() -> None:
    assert false_halt_rate(RAW, true_ratio=RAW.min_ratio, double_count=True) > 2 * ALPHA


def test_defaults_with_cap_and_difference_null_hold_too() -> None:
    settings = ReleaseSettings(alpha=ALPHA, signals=1)
    assert false_halt_rate(settings, true_ratio=settings.min_ratio, seed=2) <= ALPHA


def test_a_platform_incident_on_both_arms_does_not_move_the_test() -> None:
    quiet = false_halt_rate(RAW, true_ratio=1.0, seed=3)
    storm = false_halt_rate(RAW, true_ratio=1.0, seed=3, incident=True)
    assert quiet <= 0.01 and storm <= 0.01, (quiet, storm)


def test_average_pooling_is_valid_and_needs_an_environment_with_k_over_alpha() -> None:
    s = ReleaseSettings(alpha=0.01, signals=1, pooling=Pooling.AVERAGE)
    ev = ReleaseEvidence(4, s)
    cohort = np.zeros(4, dtype=np.intp)
    log_e = np.array([[math.log(396.0), 0.0, 0.0, 0.0]])
    assert not pool(arrays(ev, cohort, log_e), 1, s).crossed[0]  # (396 + 3) / 4 < 100
    log_e[0, 0] = math.log(397.5)
    assert pool(arrays(ev, cohort, log_e), 1, s).crossed[0]  # (397.5 + 3) / 4 >= 100


def test_pooling_beats_every_environment_alone_on_a_quiet_fleet() -> None:
    # 500 quiet environments, a 5x release: no single one reaches the threshold, the cohort does.
    s = ReleaseSettings(signals=1)
    rng = np.random.default_rng(4)
    n = 500
    ev = ReleaseEvidence(n, s)
    for _ in range(60):
        n_c = rng.poisson(0.2 * 0.2 * 10, n)
        n_s = rng.poisson(0.2 * 0.8 * 10, n)
        ev.update(n_c, n_s, rng.binomial(n_c, 0.005)[None], rng.binomial(n_s, 0.001)[None])
    fleet = arrays(ev, np.zeros(n, dtype=np.intp))
    per_env = (ev.loglik[0, 1:] - ev.loglik[0, :1]).max()
    assert per_env < s.threshold
    assert pool(fleet, 1, s).crossed[0]


def test_a_few_bad_environments_do_not_halt_a_healthy_release_with_the_cap() -> None:
    s = ReleaseSettings(signals=1)
    rng = np.random.default_rng(5)
    n = 2000
    ev = ReleaseEvidence(n, s)
    p_c = np.full(n, 0.001)
    p_c[:5] = 0.2  # five busy environments whose customer code is broken
    rate = np.where(np.arange(n) < 5, 20.0, 0.5)
    halted_capped = halted_raw = False
    raw = replace(s, env_cap=math.inf)
    for _ in range(60):
        n_c = rng.poisson(rate * 0.2 * 10)
        n_s = rng.poisson(rate * 0.8 * 10)
        ev.update(n_c, n_s, rng.binomial(n_c, p_c)[None], rng.binomial(n_s, 0.001)[None])
        fleet = arrays(ev, np.zeros(n, dtype=np.intp))
        halted_capped |= bool(pool(fleet, 1, s).crossed[0])
        halted_raw |= bool(pool(fleet, 1, raw).crossed[0])
    assert not halted_capped
    assert halted_raw  # without the cap, five environments halt the whole release


def test_robust_removal_is_a_lower_bound() -> None:
    s = ReleaseSettings(signals=1, min_diff=0.0, env_cap=math.inf)
    rng = np.random.default_rng(6)
    ev = ReleaseEvidence(100, s)
    ev.loglik[0] = rng.normal(0.3, 1.0, (s.grid_rows, 100))
    fleet = arrays(ev, np.zeros(100, dtype=np.intp))
    full = pool(fleet, 1, s).statistic[0, 0]
    robust = pool(fleet, 1, replace(s, robust_envs=5)).statistic[0, 0]
    assert full >= s.threshold  # the robust check only runs for crossing releases
    assert robust < full


def test_ebh_selects_as_wang_and_ramdas() -> None:
    # K = 4, q = 0.5: thresholds K/(q k) = 8, 4, 2.67, 2. e = 10, 5, 3, 0.5 -> k = 3.
    log_e = np.log(np.array([10.0, 5.0, 3.0, 0.5, 100.0]))
    cohort = np.array([0, 0, 0, 0, -1], dtype=np.intp)
    assert ebh(log_e, cohort, 1, 0.5).tolist() == [True, True, True, False, False]
    # One environment at e = 7 among four is not enough (needs 8).
    assert not ebh(np.log(np.array([7.0, 1, 1, 1])), cohort[:4], 1, 0.5).any()


def test_ebh_false_discovery_rate_under_the_null() -> None:
    # All nulls true: e-values are likelihood ratios at the boundary; FDR = P(any rejection).
    rng = np.random.default_rng(7)
    reps, k = 2000, 20
    x = rng.binomial(30, 0.2, (reps, k))
    theta0, theta1 = 0.2, 0.5
    log_e = x * math.log(theta1 / theta0) + (30 - x) * math.log((1 - theta1) / (1 - theta0))
    cohort = np.repeat(np.arange(reps), k).astype(np.intp)
    selected = ebh(log_e.ravel(), cohort, reps, 0.1).reshape(reps, k)
    assert selected.any(axis=1).mean() <= 0.1


def state(env: str, release: str, pod_hash: str = "c1", aborted: bool = False) -> RolloutState:
    ns, name = env.split("/")
    return RolloutState(ns, name, pod_hash, "s0", aborted=aborted, release=release)


def summary(
    env: str, release: str, s: ReleaseSettings, gain: float, *, log_e: float = 0.0, **kw: object
) -> EnvSummary:
    g = s.grid_rows
    # Log likelihoods that rise with the ratio (a bad release) or fall (a fine one).
    ll = tuple(tuple(gain * math.log(r) for r in (s.min_ratio, *s.ratios)) for _ in range(2))
    base: dict[str, object] = {
        "env": env,
        "release": release,
        "pod_hash": "c1",
        "at": 10.0,
        "canary_requests": 100,
        "stable_requests": 400,
        "canary_bad": (5, 0),
        "stable_bad": (2, 0),
        "window_stable_requests": 100,
        "window_stable_bad": (0, 0),
        "loglik": ll,
        "stable_sum": 400.0,
        "share_sum": 80.0,
        "log_e": (log_e, 0.0),
    }
    base.update(kw)
    assert len(ll[0]) == g
    return EnvSummary(**base)  # type: ignore[arg-type]


def test_board_halts_a_bad_release_and_fans_out_to_every_environment_in_progress() -> None:
    s = ReleaseSettings(min_diff=0.0)
    board = ReleaseBoard(s, capacity=2)
    # Each environment adds at most env_cap = 1 nat: twelve carry the halt (ln 200 = 5.3).
    envs = [f"ns{i}/web" for i in range(13)]
    for env in envs[:12]:
        board.apply_state(state(env, "v2"))
    board.apply_state(state(envs[12], "v1"))  # another release: not in the cohort
    for env in envs[:12]:
        assert board.apply_summary(summary(env, "v2", s, gain=1.0))
    assert not board.apply_summary(summary(envs[0], "v2", s, 1.0, pod_hash="other"))
    out = board.evaluate(100.0)
    assert len(out.verdicts) == 1
    verdict = out.verdicts[0]
    assert verdict.decision_id == release_decision_id("v2")
    assert sorted(e for e, _ in verdict.targets) == sorted(envs[:12])
    assert verdict.evidence.environments == 12
    assert verdict.evidence.statistic >= verdict.evidence.threshold
    assert "pooled statistic" in verdict.evidence.describe()
    assert decode_release_verdict(encode_release_verdict(verdict)) == verdict
    # Same decision next pass: nothing new; a joining environment is added under the same id.
    assert board.evaluate(101.0).verdicts == []
    board.apply_state(state("ns99/web", "v2"))
    again = board.evaluate(102.0).verdicts
    assert len(again) == 1 and again[0].decision_id == verdict.decision_id
    assert ("ns99/web", "c1") in again[0].targets
    # The aborted environments are triaged `release`.
    for env in envs[:12]:
        board.apply_state(state(env, "v2", aborted=True))
    cats = {t.env: t.category for t in board.evaluate(103.0).triage}
    assert set(cats.values()) == {Triage.RELEASE} and len(cats) == 12


def test_board_does_not_halt_a_fine_release_and_triages_an_environment() -> None:
    s = ReleaseSettings()
    board = ReleaseBoard(s)
    for i in range(30):
        env = f"ns{i}/web"
        board.apply_state(state(env, "v3"))
        board.apply_summary(summary(env, "v3", s, gain=-0.5))
    bad = "ns0/web"
    board.apply_state(state(bad, "v3", aborted=True))
    board.apply_summary(summary(bad, "v3", s, gain=3.0, log_e=9.0))
    out = board.evaluate(50.0)
    assert out.verdicts == []
    (record,) = out.triage
    assert record.env == bad and record.category is Triage.ENVIRONMENT
    assert record.rest_statistic >= math.log(1 / s.triage_alpha)
    assert decode_triage(encode_triage(record)) == record
    assert "rest of its cohort" in record.describe()


def test_triage_platform_when_stable_fails_here_and_undetermined_without_evidence() -> None:
    s = ReleaseSettings(signals=1, platform_surge_share=0.5)  # one of three is no surge
    ev = ReleaseEvidence(3, s)
    fleet = replace(
        arrays(ev, np.zeros(3, dtype=np.intp)),
        stable_requests=np.array([10_000, 10_000, 10_000]),
        stable_bad=np.array([[10, 10, 10]]),
        window_stable_requests=np.array([1000, 1000, 1000]),
        window_stable_bad=np.array([[40, 1, 1]]),
        aborted=np.array([True, True, False]),
    )
    pooled = pool(fleet, 1, s)
    rows = np.array([0, 1], dtype=np.intp)
    cats, _ = triage(fleet, pooled, np.zeros(1, dtype=np.bool_), rows, s)
    assert [TRIAGE_ORDER[c] for c in cats] == [Triage.PLATFORM, Triage.UNDETERMINED]
    # On a later look, platform is no longer concluded (read once, at the abort).
    later, _ = triage(fleet, pooled, np.zeros(1, dtype=np.bool_), rows, s, np.zeros(2, bool))
    assert TRIAGE_ORDER[later[0]] is Triage.UNDETERMINED
    # A third of the environments failing at once is a surge at 2 % (with a minimum of one).
    loud = ReleaseSettings(signals=1, platform_surge_min=1)
    surge = pool(fleet, 1, loud)
    assert surge.surge[0] and not pool(fleet, 1, ReleaseSettings(signals=1)).surge[0]
    cats, _ = triage(fleet, surge, np.zeros(1, dtype=np.bool_), rows, loud)
    assert [TRIAGE_ORDER[c] for c in cats] == [Triage.PLATFORM, Triage.PLATFORM]


def test_summary_codec_round_trips_and_refuses_garbage() -> None:
    s = ReleaseSettings()
    ev = ReleaseEvidence(2, s, signals=2)
    ev.update(
        np.array([3, 4]),
        np.array([10, 10]),
        np.array([[1, 0], [0, 0]]),
        np.array([[0, 1], [0, 0]]),
    )
    one = summary_from_rows(
        "ns/web", "v1", "c1", 5.0, ev, 0, (3, 10, 1, 0, 0, 0), (10, 0, 0), (0.5, 0.0)
    )
    assert decode_env_summary(encode_env_summary(one)) == one
    assert one.loglik[0][0] != 0.0
    for raw in (b"[]", b"{", b'{"env": "x"}'):
        with pytest.raises(DecodeError):
            decode_env_summary(raw)
    with pytest.raises(DecodeError):
        decode_release_verdict(b'{"decision_id": 1}')


def test_settings_are_validated() -> None:
    for bad in (
        {"alpha": 0.0},
        {"fine_ratio": 2.5},
        {"ratios": (1.1,), "weights": (1.0,)},
        {"robust_envs": -1},
    ):
        with pytest.raises(ValueError):
            ReleaseSettings(**bad)


def test_blocks_close_on_request_counts_only() -> None:
    s = ReleaseSettings(signals=1, block_requests=5)
    ev = ReleaseEvidence(1, s)
    ev.update(np.array([1]), np.array([2]), np.array([[1]]), Z1)
    assert not ev.loglik.any()  # 3 requests: the block is open
    ev.update(np.array([0]), np.array([2]), Z1, Z1)
    assert ev.loglik[0, 1:, 0].min() > 0  # closed: one canary bad request at share 1/5
    assert ev.stable_sum[0] == 4 and math.isclose(ev.share_sum[0], 4 * 0.2)


def test_board_in_ebh_mode_returns_the_selected_environments_once() -> None:
    s = ReleaseSettings(fleet_control=FleetControl.EBH, fdr=0.5)
    board = ReleaseBoard(s)
    # K = 4 at fdr 0.5: bars 8, 4, 2.67, 2; e = 10, 5, 3, 0.5 selects three.
    for i, e in enumerate((10.0, 5.0, 3.0, 0.5)):
        env = f"ns{i}/web"
        board.apply_state(state(env, "v4"))
        board.apply_summary(summary(env, "v4", s, gain=0.0, log_e=math.log(e)))
    out = board.evaluate(1.0)
    assert sorted(e for e, _ in out.ebh_aborts) == ["ns0/web", "ns1/web", "ns2/web"]
    assert board.evaluate(2.0).ebh_aborts == []


def test_board_triage_is_latched_and_a_later_halt_overrides_it() -> None:
    s = ReleaseSettings(min_diff=0.0)
    board = ReleaseBoard(s, capacity=4)
    sick = "ns0/web"
    board.apply_state(state(sick, "v5", aborted=True))
    board.apply_summary(
        summary(
            sick,
            "v5",
            s,
            0.0,
            stable_requests=20_000,
            stable_bad=(60, 0),
            window_stable_requests=1000,
            window_stable_bad=(40, 0),
        )
    )
    (first,) = board.evaluate(1.0).triage
    assert first.category is Triage.PLATFORM and first.stable_failing
    assert board.evaluate(2.0).triage == []  # latched: no new record
    # The release turns out bad across its cohort: the halt re-triages the abort as `release`.
    for i in range(1, 13):
        env = f"ns{i}/web"
        board.apply_state(state(env, "v5"))
        board.apply_summary(summary(env, "v5", s, gain=1.0))
    out = board.evaluate(3.0)
    assert len(out.verdicts) == 1 and sick not in {e for e, _ in out.verdicts[0].targets}
    assert [(t.env, t.category) for t in out.triage] == [(sick, Triage.RELEASE)]
    # A new canary revision starts the environment's evidence and triage again.
    board.apply_state(state(sick, "v5", pod_hash="c2"))
    assert sick not in board.triaged
