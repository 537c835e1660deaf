"""Triage of every aborted environment: release, platform, environment or undetermined, from the
pooled pass and the fleet's arrays. streams/release.py ("Triage") explains the rules.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from streams.pooledhalt import FleetArrays, Pooled, stable_failing
from streams.release import ReleaseSettings, Triage

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]


def triage(
    fleet: FleetArrays,
    pooled: Pooled,
    halted: Bools,
    rows: NDArray[np.intp],
    s: ReleaseSettings,
    first: Bools | None = None,
) -> tuple[NDArray[np.int8], Floats]:
    """Category per aborted row (TRIAGE_ORDER index) and the rest-of-cohort statistic.

    halted [release]: the release's halt is latched. first [len(rows)]: the abort is being
    triaged for the first time (default: all); `platform` is only concluded then, at the abort,
    never on a later look (stable's window is read once per abort, not until it trips).
    The rest of the cohort excludes the row itself and every environment whose own test
    rejected (the suspects): ln e of "the release is at least fine_ratio x worse" over the
    others, in the signal where the row's own evidence is strongest.
    """
    cat = np.full(rows.size, TRIAGE_ORDER.index(Triage.UNDETERMINED), dtype=np.int8)
    if rows.size == 0:
        return cat, np.zeros(0)
    n_sig = fleet.log_e.shape[0]
    n_rel = pooled.size.size
    cohort = fleet.cohort
    suspect = (fleet.log_e >= s.env_threshold) & (cohort >= 0)  # [signal, row]
    own_sig = np.argmax(fleet.log_e[:, rows], axis=0)
    own_rejects = fleet.log_e[own_sig, rows] >= s.env_threshold
    rest = np.zeros(rows.size)
    coh = cohort[rows]
    for t in range(n_sig):
        contrib = np.where(suspect[t] | (cohort < 0), 0.0, -fleet.loglik[t, s.fine_row])
        total = np.bincount(
            np.where(cohort >= 0, cohort, n_rel), weights=contrib, minlength=n_rel + 1
        )
        mine = total[np.where(coh >= 0, coh, n_rel)] - contrib[rows]
        rest = np.where(own_sig == t, mine, rest)
    platform_here = stable_failing(fleet, s, rows)[own_sig, np.arange(rows.size)]
    surge_here = pooled.surge[own_sig] & ~own_rejects
    if first is not None:
        platform_here = platform_here & first
        surge_here = surge_here & first
    release_here = np.where(coh >= 0, halted[np.maximum(coh, 0)], False)
    env_here = own_rejects & (rest >= math.log(1.0 / s.triage_alpha))
    order = [
        (release_here, Triage.RELEASE),
        (platform_here | surge_here, Triage.PLATFORM),
        (env_here, Triage.ENVIRONMENT),
    ]
    decided = np.zeros(rows.size, dtype=np.bool_)
    for mask, category in order:
        new = mask & ~decided
        cat[new] = TRIAGE_ORDER.index(category)
        decided |= new
    return cat, rest


TRIAGE_ORDER: tuple[Triage, ...] = (
    Triage.RELEASE,
    Triage.ENVIRONMENT,
    Triage.PLATFORM,
    Triage.UNDETERMINED,
)
