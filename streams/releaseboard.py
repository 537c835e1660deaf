"""The release agent's core: rollout states and environment summaries in; release halts
(`ReleaseVerdict`), triage records, e-BH aborts and pooled passes out. Time is an argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from streams.events import RolloutState
from streams.pooledhalt import FleetArrays, Pooled, Scratch, ebh, pool, stable_failing
from streams.pooledpass import PassRows, PooledPass, PooledPassSettings, PooledSignal, ReleasePass
from streams.promotion import LAMBDAS
from streams.release import FleetControl, ReleaseSettings, Triage
from streams.releaserecords import (
    EnvSummary,
    ReleaseEvidenceRecord,
    ReleaseVerdict,
    TriageRecord,
    release_decision_id,
)
from streams.triage import TRIAGE_ORDER, triage

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]

_RELEASE = TRIAGE_ORDER.index(Triage.RELEASE)
_UNDET = TRIAGE_ORDER.index(Triage.UNDETERMINED)


@dataclass(slots=True)
class BoardPass:
    verdicts: list[ReleaseVerdict] = field(default_factory=list)  # new or with new targets
    triage: list[TriageRecord] = field(default_factory=list)  # new or changed categories
    ebh_aborts: list[tuple[str, str]] = field(default_factory=list)  # (env, pod_hash), ebh mode
    pooled: Pooled | None = None
    passes: list[ReleasePass] = field(default_factory=list)  # pooled passes due for publishing


SIGNAL_NAMES = ("errors", "latency")


class ReleaseBoard:
    """Rollout states and environment summaries in, release halts and triage out.

    The release agent (keyed by release) feeds it `RolloutState`s and `EnvSummary`s and calls
    `evaluate(now)`; it sends the verdicts' targets to the actuator and publishes the triage.
    """

    def __init__(
        self,
        settings: ReleaseSettings | None = None,
        capacity: int = 64,
        pass_settings: PooledPassSettings | None = None,
    ) -> None:
        self.settings = settings or ReleaseSettings()
        self.pass_settings = pass_settings or PooledPassSettings()
        self.pooled_pass = PooledPass(
            (self.settings.min_ratio, *self.settings.ratios), self.pass_settings
        )
        # Latched pooled passes [signal, release], and when each release's record went out.
        self.pass_latched = np.zeros((self.settings.signals, 0), dtype=np.bool_)
        self.pass_sent: dict[str, tuple[float, tuple[bool, ...]]] = {}
        # Frozen pass evidence of environments that left their release (stopped factors).
        self.ghosts: PassRows | None = None
        self.n_sig = self.settings.signals
        self.row_of: dict[str, int] = {}
        self.envs: list[str] = []
        self.pod_hash: list[str] = []
        self.release_of_row: list[str] = []
        self.in_progress: list[bool] = []
        self.code_of: dict[str, int] = {}
        self.releases: list[str] = []
        self.halted: dict[str, ReleaseVerdict] = {}
        self.triaged: dict[str, TriageRecord] = {}  # env -> latest triage of its abort
        self.ebh_done: set[str] = set()
        self.scratch = Scratch()
        self._states_changed = False
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        g1, n = self.settings.grid_rows, self.n_sig
        self.loglik = np.zeros((n, g1, capacity))
        self.stable_sum = np.zeros(capacity)
        self.share_sum = np.zeros(capacity)
        self.log_e = np.zeros((n, capacity))
        self.counts = np.zeros((2, capacity), dtype=np.int64)
        self.bad = np.zeros((2, n, capacity), dtype=np.int64)
        self.window_n = np.zeros(capacity, dtype=np.int64)
        self.window_bad = np.zeros((n, capacity), dtype=np.int64)
        self.cohort = np.full(capacity, -1, dtype=np.intp)
        self.aborted = np.zeros(capacity, dtype=np.bool_)
        self.category = np.full(capacity, -1, dtype=np.int8)  # latched triage, -1: none
        self.diff_log = np.zeros((n, len(LAMBDAS), capacity))
        self.canary_sum = np.zeros(capacity)
        # The release whose pooled pass this row's evidence feeds (stays after the canary ends).
        self.pass_cohort = np.full(capacity, -1, dtype=np.intp)

    def _grow(self, capacity: int) -> None:
        old = self.cohort.size
        if capacity <= old:
            return
        names = (
            "loglik",
            "stable_sum",
            "share_sum",
            "log_e",
            "counts",
            "bad",
            "window_n",
            "window_bad",
            "cohort",
            "aborted",
            "category",
            "diff_log",
            "canary_sum",
            "pass_cohort",
        )
        saved = {name: getattr(self, name) for name in names}
        self._alloc(capacity)
        for name in names:
            getattr(self, name)[..., :old] = saved[name]

    def _row(self, env: str) -> int:
        row = self.row_of.get(env)
        if row is None:
            row = len(self.envs)
            if row >= self.cohort.size:
                self._grow(2 * self.cohort.size)
            self.row_of[env] = row
            self.envs.append(env)
            self.pod_hash.append("")
            self.release_of_row.append("")
            self.in_progress.append(False)
        return row

    def _code(self, release: str) -> int:
        code = self.code_of.get(release)
        if code is None:
            code = len(self.releases)
            self.code_of[release] = code
            self.releases.append(release)
        return code

    def _freeze(self, row: int) -> None:
        """The row's pass evidence leaves its release: kept as a frozen (stopped) factor."""
        code = int(self.pass_cohort[row])
        self.pass_cohort[row] = -1
        if code < 0 or not (self.canary_sum[row] > 0 or self.loglik[:, :, row].any()):
            return
        counts = np.stack(
            [np.broadcast_to(self.counts[0, row], (self.n_sig,)),
             np.broadcast_to(self.counts[1, row], (self.n_sig,)),
             self.bad[0, :, row], self.bad[1, :, row]]
        )[:, :, None]  # fmt: skip
        one = PassRows(
            self.loglik[:, :, row : row + 1].copy(),
            self.diff_log[:, :, row : row + 1].copy(),
            self.canary_sum[row : row + 1].copy(),
            np.asarray([code], dtype=np.intp),
            counts.astype(np.int64),
        )
        g = self.ghosts
        self.ghosts = one if g is None else PassRows(
            np.concatenate([g.loglik, one.loglik], axis=2),
            np.concatenate([g.diff_log, one.diff_log], axis=2),
            np.concatenate([g.canary_sum, one.canary_sum]),
            np.concatenate([g.cohort, one.cohort]),
            np.concatenate([g.counts, one.counts], axis=2),
        )  # fmt: skip

    def _clear(self, row: int) -> None:
        self._freeze(row)
        self.diff_log[..., row] = 0
        self.canary_sum[row] = 0
        for a in (self.loglik, self.log_e, self.bad, self.window_bad):
            a[..., row] = 0
        for b in (self.stable_sum, self.share_sum, self.window_n):
            b[row] = 0
        self.counts[:, row] = 0
        self.aborted[row] = False
        self.category[row] = -1
        self.triaged.pop(self.envs[row], None)

    def apply_state(self, state: RolloutState) -> None:
        """A rollout-state snapshot: which release the environment's canary carries."""
        row = self._row(state.env)
        self._states_changed = True
        if state.current_pod_hash != self.pod_hash[row]:
            self._clear(row)
            self.pod_hash[row] = state.current_pod_hash
        in_progress = state.canary_in_progress and bool(state.release)
        self.release_of_row[row] = state.release
        self.in_progress[row] = in_progress
        if state.release and (in_progress or state.aborted):
            self.cohort[row] = self._code(state.release)
            if self.pass_cohort[row] < 0 and not self.loglik[:, :, row].any():
                self.pass_cohort[row] = self.cohort[row]
        else:
            self.cohort[row] = -1
        if self.pass_cohort[row] >= 0 and state.release != self.releases[self.pass_cohort[row]]:
            # Another release on the same revision (rare): its evidence no longer counts for
            # either release's pass (frozen for the old one, not lent to the new one).
            self._freeze(row)
        if state.aborted:
            self.aborted[row] = True

    def apply_summary(self, summary: EnvSummary) -> bool:
        """Store an environment's evidence (latest wins); False if it is for another revision."""
        row = self.row_of.get(summary.env)
        if row is None or summary.pod_hash != self.pod_hash[row]:
            return False
        if summary.release != self.release_of_row[row]:
            return False
        ll = np.asarray(summary.loglik, dtype=np.float64)
        if ll.shape != (self.n_sig, self.settings.grid_rows):
            raise ValueError(
                f"summary loglik shape {ll.shape}, want {(self.n_sig, self.settings.grid_rows)}"
            )
        self.loglik[:, :, row] = ll
        self.stable_sum[row] = summary.stable_sum
        self.share_sum[row] = summary.share_sum
        self.log_e[:, row] = summary.log_e
        self.counts[:, row] = (summary.canary_requests, summary.stable_requests)
        self.bad[0, :, row] = summary.canary_bad
        self.bad[1, :, row] = summary.stable_bad
        self.window_n[row] = summary.window_stable_requests
        self.window_bad[:, row] = summary.window_stable_bad
        diff = np.asarray(summary.diff_log, dtype=np.float64)
        if diff.shape == self.diff_log.shape[:2]:
            self.diff_log[:, :, row] = diff
            self.canary_sum[row] = summary.canary_sum
        if summary.aborted:
            self.aborted[row] = True
        return True

    def restore_halt(self, verdict: ReleaseVerdict) -> None:
        """A halt decided before (the release agent's table): latched, never decided again."""
        self._code(verdict.release)
        self.halted[verdict.release] = verdict

    def restore_triage(self, record: TriageRecord) -> bool:
        """A triage published before, latched for the same revision; False if it is stale."""
        row = self.row_of.get(record.env)
        if row is None or self.pod_hash[row] != record.pod_hash:
            return False
        self.category[row] = TRIAGE_ORDER.index(record.category)
        self.triaged[record.env] = record
        return True

    def fleet(self) -> FleetArrays:
        n = len(self.envs)
        return FleetArrays(
            loglik=self.loglik[:, :, :n],
            stable_sum=self.stable_sum[:n],
            share_sum=self.share_sum[:n],
            log_e=self.log_e[:, :n],
            canary_requests=self.counts[0, :n],
            stable_requests=self.counts[1, :n],
            canary_bad=self.bad[0, :, :n],
            stable_bad=self.bad[1, :, :n],
            window_stable_requests=self.window_n[:n],
            window_stable_bad=self.window_bad[:, :n],
            cohort=self.cohort[:n],
            aborted=self.aborted[:n],
        )

    def evaluate(self, now: float) -> BoardPass:
        s = self.settings
        fleet = self.fleet()
        n_rel = len(self.releases)
        latched = np.zeros(n_rel, dtype=np.bool_)
        for release in self.halted:
            latched[self.code_of[release]] = True
        pooled = pool(fleet, n_rel, s, self.scratch, latched)
        out = BoardPass(pooled=pooled)
        # New halts, and halted releases whose cohort gained environments (latched: a halt
        # stays, and reaches environments that start the release later too).
        codes = set(np.flatnonzero(pooled.crossed & ~latched).tolist())
        if self._states_changed:
            codes |= {self.code_of[r] for r in self.halted}
        self._states_changed = False
        for code in sorted(codes):
            release = self.releases[code]
            verdict = self._verdict(release, code, pooled, fleet, now)
            if verdict is not None:
                out.verdicts.append(verdict)
        if s.fleet_control is FleetControl.EBH:
            for t in range(self.n_sig):
                chosen = ebh(fleet.log_e[t], fleet.cohort, n_rel, s.fdr)
                for row in np.flatnonzero(chosen):
                    env = self.envs[int(row)]
                    key = f"{env}@{self.pod_hash[int(row)]}"
                    if self.in_progress[int(row)] and key not in self.ebh_done:
                        self.ebh_done.add(key)
                        out.ebh_aborts.append((env, self.pod_hash[int(row)]))
        latched = np.zeros(n_rel, dtype=np.bool_)
        for release in self.halted:
            latched[self.code_of[release]] = True
        out.triage = self._triage(fleet, pooled, latched, now)
        out.passes = self._passes(now)
        return out

    def pass_rows(self) -> PassRows:
        """Every row's pass evidence, live rows then frozen ones."""
        n = len(self.envs)
        counts = np.stack(
            [np.broadcast_to(self.counts[0, :n], (self.n_sig, n)),
             np.broadcast_to(self.counts[1, :n], (self.n_sig, n)),
             self.bad[0, :, :n], self.bad[1, :, :n]]
        )  # fmt: skip
        live = PassRows(
            self.loglik[:, :, :n],
            self.diff_log[:, :, :n],
            self.canary_sum[:n],
            self.pass_cohort[:n],
            counts.astype(np.int64),
        )
        g = self.ghosts
        if g is None:
            return live
        return PassRows(
            np.concatenate([live.loglik, g.loglik], axis=2),
            np.concatenate([live.diff_log, g.diff_log], axis=2),
            np.concatenate([live.canary_sum, g.canary_sum]),
            np.concatenate([live.cohort, g.cohort]),
            np.concatenate([live.counts, g.counts], axis=2),
        )

    def _passes(self, now: float) -> list[ReleasePass]:
        """Latch the pooled passes; the records due: a new pass, or `refresh_s` since the
        last record of a release that has passed a signal and still has a canary running."""
        n_rel = len(self.releases)
        if n_rel == 0:
            return []
        rows = self.pass_rows()
        log_e = self.pooled_pass.log_e(rows, n_rel)
        passed = np.maximum(*log_e) >= self.pass_settings.threshold
        if self.pass_latched.shape[1] < n_rel:
            grown = np.zeros((self.n_sig, n_rel), dtype=np.bool_)
            grown[:, : self.pass_latched.shape[1]] = self.pass_latched
            self.pass_latched = grown
        self.pass_latched |= passed
        running = np.zeros(n_rel, dtype=np.bool_)
        live = self.cohort[: len(self.envs)]
        running[live[live >= 0]] = True
        out = []
        for code in np.flatnonzero(self.pass_latched.any(axis=0) & running).tolist():
            release = self.releases[code]
            state = tuple(bool(x) for x in self.pass_latched[:, code])
            sent = self.pass_sent.get(release)
            if (
                sent is not None
                and sent[1] == state
                and now - sent[0] < self.pass_settings.refresh_s
            ):
                continue
            out.append(self._pass_record(rows, log_e, code, now))
            self.pass_sent[release] = (now, state)
        return out

    def _pass_record(
        self, rows: PassRows, log_e: tuple[Floats, Floats], code: int, now: float
    ) -> ReleasePass:
        ratio, diff = log_e
        mine = rows.cohort == code
        signals = []
        for t in range(self.n_sig):
            tol_ratio, tol_diff = self.pass_settings.tolerances[t]
            ratio_bound, diff_bound = self.pooled_pass.bounds(rows, code, t)
            c = rows.counts[:, t][:, mine].sum(axis=1)
            signals.append(
                PooledSignal(
                    signal=SIGNAL_NAMES[t] if t < len(SIGNAL_NAMES) else str(t),
                    passed=bool(self.pass_latched[t, code]),
                    ratio_bound=ratio_bound if math.isfinite(ratio_bound) else None,
                    diff_bound=diff_bound if diff_bound < 1.0 else None,
                    tol_ratio=tol_ratio,
                    tol_diff=tol_diff,
                    statistic=round(float(max(ratio[t, code], diff[t, code])), 6),
                    threshold=round(self.pass_settings.threshold, 6),
                    canary_requests=int(c[0]),
                    stable_requests=int(c[1]),
                    canary_bad=int(c[2]),
                    stable_bad=int(c[3]),
                )
            )
        return ReleasePass(
            release=self.releases[code],
            decided_at=now,
            beta=self.pass_settings.beta,
            environments=int(mine.sum()),
            signals=tuple(signals),
            env_cap=self.pass_settings.env_cap,
        )

    def _triage(
        self, fleet: FleetArrays, pooled: Pooled, halted: Bools, now: float
    ) -> list[TriageRecord]:
        """Triage is latched at the abort; it only moves from undetermined, or to release."""
        s = self.settings
        n = fleet.cohort.size
        aborted = np.flatnonzero(fleet.aborted & (fleet.cohort >= 0))
        prev = self.category[:n][aborted]
        in_halted = halted[fleet.cohort[aborted]]
        open_ = (prev < 0) | (prev == _UNDET) | (in_halted & (prev != _RELEASE))
        rows = aborted[open_]
        prev = prev[open_]
        if rows.size == 0:
            return []
        cats, rest = triage(fleet, pooled, halted, rows, s, prev < 0)
        changed = np.flatnonzero(cats != prev)
        if changed.size == 0:
            return []
        own = fleet.log_e[:, rows].max(axis=0)
        sig_of = np.argmax(fleet.log_e[:, rows], axis=0)
        failing = stable_failing(fleet, s, rows)
        records = []
        for i in changed.tolist():
            row = int(rows[i])
            code = int(fleet.cohort[row])
            sig = int(sig_of[i])
            self.category[row] = cats[i]
            record = TriageRecord(
                env=self.envs[row],
                release=self.releases[code],
                pod_hash=self.pod_hash[row],
                category=TRIAGE_ORDER[int(cats[i])],
                at=now,
                own_statistic=float(own[i]),
                rest_statistic=float(rest[i]),
                release_statistic=float(pooled.statistic[sig, code]),
                stable_failing=bool(failing[sig, i]),
                surge=bool(pooled.surge[sig]),
            )
            self.triaged[record.env] = record
            records.append(record)
        return records

    def _verdict(
        self, release: str, code: int, pooled: Pooled, fleet: FleetArrays, now: float
    ) -> ReleaseVerdict | None:
        rows = np.flatnonzero(fleet.cohort == code)
        targets = tuple(
            (self.envs[int(r)], self.pod_hash[int(r)])
            for r in rows
            if self.in_progress[int(r)] and not fleet.aborted[int(r)]
        )
        previous = self.halted.get(release)
        if previous is not None:
            known = set(previous.targets)
            new = tuple(t for t in targets if t not in known)
            if not new:
                return None
            verdict = ReleaseVerdict(
                previous.decision_id, release, now, previous.evidence, previous.targets + new
            )
            self.halted[release] = verdict
            return verdict
        sig = int(pooled.signal[code])
        evidence = ReleaseEvidenceRecord(
            signal=SIGNAL_NAMES[sig] if sig < len(SIGNAL_NAMES) else str(sig),
            canary_requests=int(fleet.canary_requests[rows].sum()),
            canary_bad=int(fleet.canary_bad[sig, rows].sum()),
            stable_requests=int(fleet.stable_requests[rows].sum()),
            stable_bad=int(fleet.stable_bad[sig, rows].sum()),
            statistic=float(pooled.statistic[sig, code]),
            threshold=pooled.threshold,
            environments=int(rows.size),
            environments_with_bad=int(
                ((fleet.canary_bad[sig, rows] + fleet.stable_bad[sig, rows]) > 0).sum()
            ),
            ratio_estimate=float(pooled.ratio_estimate[sig, code]),
            pooling=self.settings.pooling.value,
            robust_envs=self.settings.robust_envs,
        )
        verdict = ReleaseVerdict(release_decision_id(release), release, now, evidence, targets)
        self.halted[release] = verdict
        return verdict
