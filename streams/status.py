"""What `canarywatch status` and `explain` show: verdict snapshots become rows and sentences.

Pure: snapshots (`streams.promotion.VerdictSnapshot`, as read from the compacted verdicts
topic) and the time in, rows, JSON and words out. The I/O (reading the topic, printing with
rich, plotting) is in agents/status.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.promotion import ABORT, INCONCLUSIVE, PASS, SignalPass, VerdictSnapshot

PLATFORM = "platform"
STALE = "stale"
# Most urgent first: a decision to look at, then what is not the canary's fault, a worker that
# stopped reporting, canaries still being judged, and those good to promote.
URGENCY = {ABORT: 0, PLATFORM: 1, STALE: 2, INCONCLUSIVE: 3, PASS: 4}


@dataclass(slots=True)  # not frozen: status builds 20,000 of these per read
class SignalRow:
    signal: str
    verdict: str  # pass | inconclusive | abort | platform | continue
    canary_bad: int
    canary_requests: int
    stable_bad: int
    stable_requests: int
    statistic: float
    threshold: float
    ratio_bound: float | None
    diff_bound: float | None
    tol_ratio: float
    tol_diff: float
    needed_bad: int | None


@dataclass(slots=True)
class StatusRow:
    cluster: str
    namespace: str
    rollout: str
    release: str
    pod_hash: str
    step: int | None
    weight: int | None
    verdict: str  # pass | inconclusive | abort | platform | stale
    signals: tuple[SignalRow, ...]
    age_s: float  # since the canary revision started, as of its snapshot
    seen_s: float  # since the snapshot was published
    eta_s: float | None
    triage: str

    @property
    def env(self) -> str:
        return f"{self.namespace}/{self.rollout}"

    @property
    def closeness(self) -> float:
        """The largest statistic / threshold over the signals (1: at the abort threshold)."""
        return max((s.statistic / s.threshold for s in self.signals if s.threshold > 0), default=0)

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "namespace": self.namespace,
            "rollout": self.rollout,
            "release": self.release,
            "podHash": self.pod_hash,
            "step": self.step,
            "weight": self.weight,
            "verdict": self.verdict,
            "ageSeconds": round(self.age_s, 1),
            "seenSecondsAgo": round(self.seen_s, 1),
            "etaSeconds": self.eta_s,
            "triage": self.triage,
            "signals": [
                {
                    "signal": s.signal,
                    "verdict": s.verdict,
                    "canaryBad": s.canary_bad,
                    "canaryRequests": s.canary_requests,
                    "stableBad": s.stable_bad,
                    "stableRequests": s.stable_requests,
                    "statistic": s.statistic,
                    "threshold": s.threshold,
                    "ratioBound": s.ratio_bound,
                    "diffBound": s.diff_bound,
                    "tolRatio": s.tol_ratio,
                    "tolDiff": s.tol_diff,
                    "neededBad": s.needed_bad,
                }
                for s in self.signals
            ],
        }


def _list(extra: Mapping[str, Any], key: str, n: int) -> list[Any]:
    value = extra.get(key)
    return list(value) + [None] * (n - len(value)) if isinstance(value, list) else [None] * n


_SIGNAL_FIELDS = tuple(SignalPass.__dataclass_fields__)
_SNAPSHOT_FIELDS = tuple(f for f in VerdictSnapshot.__dataclass_fields__ if f != "signals")


def snapshot_json(snapshot: VerdictSnapshot) -> dict[str, Any]:
    """The snapshot as its codec's JSON object (shallow: `extra` is shared, not copied)."""
    out = {f: getattr(snapshot, f) for f in _SNAPSHOT_FIELDS}
    out["signals"] = [{f: getattr(s, f) for f in _SIGNAL_FIELDS} for s in snapshot.signals]
    return out


def row_of(snapshot: VerdictSnapshot, now: float, *, stale_after_s: float = 30.0) -> StatusRow:
    """One row from one snapshot; `stale` when its worker has not reported for `stale_after_s`
    (the gate's max age: it answers 503 for it)."""
    return row_of_json(snapshot_json(snapshot), now, stale_after_s=stale_after_s)


def row_of_json(data: Mapping[str, Any], now: float, *, stale_after_s: float = 30.0) -> StatusRow:
    """`row_of` on a snapshot as decoded JSON (`VerdictSnapshot.encode`'s object): what
    `status` builds 20,000 of per read, without a dataclass per snapshot and signal in
    between. Fields it does not know are ignored; a missing required one raises KeyError."""
    extra = data.get("extra") or {}
    raw_signals = data["signals"]
    n = len(raw_signals)
    decisions = _list(extra, "decision", n)
    needed = _list(extra, "needed_bad", n)
    signals = []
    any_platform = False
    for s, decision, need in zip(raw_signals, decisions, needed, strict=True):
        verdict = s["verdict"]
        if decision == PLATFORM and verdict != ABORT:
            verdict = PLATFORM
        any_platform = any_platform or verdict == PLATFORM
        signals.append(
            SignalRow(
                s["signal"],
                verdict,
                s["canary_bad"],
                s["canary_requests"],
                s["stable_bad"],
                s["stable_requests"],
                s["abort_statistic"],
                s["abort_threshold"],
                s["ratio_bound"],
                s["diff_bound"],
                s["tol_ratio"],
                s["tol_diff"],
                need if isinstance(need, int) else None,
            )
        )
    seen = max(0.0, now - data["decided_at"])
    verdict = data["verdict"]
    if verdict != ABORT and any_platform:
        verdict = PLATFORM
    if verdict != ABORT and seen > stale_after_s:
        verdict = STALE
    step, weight = extra.get("step_index"), extra.get("canary_weight")
    triage = extra.get("triage")
    return StatusRow(
        cluster=str(extra.get("cluster") or ""),
        namespace=data["namespace"],
        rollout=data["rollout"],
        release=data.get("release", ""),
        pod_hash=data["pod_hash"],
        step=step if isinstance(step, int) else None,
        weight=weight if isinstance(weight, int) else None,
        verdict=verdict,
        signals=tuple(signals),
        age_s=data["since_canary_start_s"],
        seen_s=seen,
        eta_s=data.get("eta_s") if verdict in (INCONCLUSIVE, STALE) else None,
        triage=str(triage) if triage else "",
    )


def status_rows(
    snapshots: Iterable[VerdictSnapshot],
    now: float,
    *,
    namespaces: Sequence[str] = (),
    releases: Sequence[str] = (),
    verdicts: Sequence[str] = (),
    stale_after_s: float = 30.0,
) -> list[StatusRow]:
    """Rows for the snapshots that pass the filters (any of each list; empty: all), most urgent
    first: abort, platform, stale, inconclusive (nearest its abort threshold first), pass."""
    return status_rows_json(
        (snapshot_json(s) for s in snapshots),
        now,
        namespaces=namespaces,
        releases=releases,
        verdicts=verdicts,
        stale_after_s=stale_after_s,
    )


def status_rows_json(
    items: Iterable[Mapping[str, Any]],
    now: float,
    *,
    namespaces: Sequence[str] = (),
    releases: Sequence[str] = (),
    verdicts: Sequence[str] = (),
    stale_after_s: float = 30.0,
) -> list[StatusRow]:
    """`status_rows` on snapshots as decoded JSON; an item missing a field is left out."""
    rows = []
    for data in items:
        try:
            if namespaces and data["namespace"] not in namespaces:
                continue
            if releases and not any(r in data.get("release", "") for r in releases):
                continue
            row = row_of_json(data, now, stale_after_s=stale_after_s)
        except (KeyError, TypeError, ValueError):
            continue  # not a snapshot this codec can read
        if verdicts and row.verdict not in verdicts:
            continue
        rows.append(row)
    rows.sort(key=_urgency)
    return rows


def _urgency(row: StatusRow) -> tuple[int, float, str]:
    return (URGENCY.get(row.verdict, 9), -row.closeness, row.env)


def status_items(
    items: Iterable[Mapping[str, Any]],
    now: float,
    *,
    namespaces: Sequence[str] = (),
    releases: Sequence[str] = (),
    verdicts: Sequence[str] = (),
    stale_after_s: float = 30.0,
) -> list[dict[str, Any]]:
    """`[row.to_json() for row in status_rows_json(...)]` in one pass per snapshot, with no
    row objects in between: `status -o json` at 20,000 canaries (a test holds the two equal)."""
    keyed = []
    for data in items:
        try:
            if namespaces and data["namespace"] not in namespaces:
                continue
            if releases and not any(r in data.get("release", "") for r in releases):
                continue
            keyed.append(_item_of_json(data, now, stale_after_s))
        except (KeyError, TypeError, ValueError):
            continue
    if verdicts:
        keyed = [k for k in keyed if k[1]["verdict"] in verdicts]
    keyed.sort(key=lambda k: k[0])
    return [item for _, item in keyed]


def _item_of_json(
    data: Mapping[str, Any], now: float, stale_after_s: float
) -> tuple[tuple[int, float, str], dict[str, Any]]:
    """(urgency key, `StatusRow.to_json()`) of `row_of_json(data, now)`."""
    extra = data.get("extra") or {}
    raw_signals = data["signals"]
    n = len(raw_signals)
    decisions = _list(extra, "decision", n)
    needed = _list(extra, "needed_bad", n)
    signals = []
    any_platform = False
    closeness = 0.0
    for s, decision, need in zip(raw_signals, decisions, needed, strict=True):
        verdict = s["verdict"]
        if decision == PLATFORM and verdict != ABORT:
            verdict = PLATFORM
        any_platform = any_platform or verdict == PLATFORM
        statistic, threshold = s["abort_statistic"], s["abort_threshold"]
        if threshold > 0:
            closeness = max(closeness, statistic / threshold)
        signals.append(
            {
                "signal": s["signal"],
                "verdict": verdict,
                "canaryBad": s["canary_bad"],
                "canaryRequests": s["canary_requests"],
                "stableBad": s["stable_bad"],
                "stableRequests": s["stable_requests"],
                "statistic": statistic,
                "threshold": threshold,
                "ratioBound": s["ratio_bound"],
                "diffBound": s["diff_bound"],
                "tolRatio": s["tol_ratio"],
                "tolDiff": s["tol_diff"],
                "neededBad": need if isinstance(need, int) else None,
            }
        )
    seen = max(0.0, now - data["decided_at"])
    verdict = data["verdict"]
    if verdict != ABORT and any_platform:
        verdict = PLATFORM
    if verdict != ABORT and seen > stale_after_s:
        verdict = STALE
    step, weight = extra.get("step_index"), extra.get("canary_weight")
    triage = extra.get("triage")
    namespace, rollout = data["namespace"], data["rollout"]
    item = {
        "cluster": str(extra.get("cluster") or ""),
        "namespace": namespace,
        "rollout": rollout,
        "release": data.get("release", ""),
        "podHash": data["pod_hash"],
        "step": step if isinstance(step, int) else None,
        "weight": weight if isinstance(weight, int) else None,
        "verdict": verdict,
        "ageSeconds": round(data["since_canary_start_s"], 1),
        "seenSecondsAgo": round(seen, 1),
        "etaSeconds": data.get("eta_s") if verdict in (INCONCLUSIVE, STALE) else None,
        "triage": str(triage) if triage else "",
        "signals": signals,
    }
    return (URGENCY.get(verdict, 9), -closeness, f"{namespace}/{rollout}"), item


# --- words ----------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def ratio_text(bad: int, total: int) -> str:
    return f"{bad}/{total}" + (f" ({bad / total:.2%})" if total else "")


def bound_text(s: SignalRow) -> str:
    """The pass bound: `<1.25x` (ratio) or `+0.41pt` (difference), the better of the two."""
    parts = []
    if s.ratio_bound is not None:
        parts.append(f"<{s.ratio_bound:g}x")
    if s.diff_bound is not None:
        parts.append(f"<+{s.diff_bound * 100:.2f}pt")
    return " ".join(parts) or "-"


BAD = {"errors": "errors (5xx)", "latency": "slow requests"}


def explain(snapshot: VerdictSnapshot, now: float, *, stale_after_s: float = 30.0) -> list[str]:
    """Why the verdict is what it is, and what would change it, in sentences."""
    row = row_of(snapshot, now, stale_after_s=stale_after_s)
    step = f"step {row.step}" if row.step is not None else "step ?"
    weight = f"{row.weight}%" if row.weight is not None else "?%"
    lines = [
        f"{row.env} (release {row.release or '?'}, canary {row.pod_hash}, {step}, weight "
        f"{weight}): {row.verdict.upper()}, {duration(row.age_s)} into the canary, reported "
        f"{duration(row.seen_s)} ago.",
        f"Why: {_why(row, snapshot.reason)}.",
    ]
    if row.verdict == STALE:
        lines.append(
            f"No worker has reported on it for {duration(row.seen_s)}: the gate refuses to answer "
            "for it (503) until one does. Check the workers' canarywatch_ready metric."
        )
    for s in row.signals:
        lines.append(
            f"- {s.signal}: canary {ratio_text(s.canary_bad, s.canary_requests)} bad, stable "
            f"{ratio_text(s.stable_bad, s.stable_requests)} bad; statistic {s.statistic:.2f} of "
            f"threshold {s.threshold:.2f}."
        )
        if row.verdict != ABORT or s.verdict == ABORT:  # after an abort, the rest is moot
            lines.extend("  " + text for text in _explain_signal(s, row))
    if row.verdict == INCONCLUSIVE and row.eta_s is not None:
        lines.append(
            f"At this traffic, a canary as good as stable passes in about {duration(row.eta_s)}."
        )
    if row.triage:
        lines.append(f"Triage: {row.triage}")
    return [line for line in lines if line]


def _why(row: StatusRow, reason: str) -> str:
    if row.verdict == PLATFORM:
        return "stable is failing about as much as the canary (platform): not the canary's fault"
    if row.verdict == STALE:
        return f"its last snapshot is {duration(row.seen_s)} old"
    return reason or "-"


def _explain_signal(s: SignalRow, row: StatusRow) -> list[str]:
    if s.verdict == ABORT:
        return [
            f"Aborted: the canary's {BAD.get(s.signal, s.signal)} are worse than stable's "
            f"beyond the minimum regression (statistic {s.statistic:.2f} >= "
            f"{s.threshold:.2f}). A new revision starts from zero."
        ]
    if s.verdict == PLATFORM:
        return [
            "Platform: stable fails about as much as the canary, so this is not the release's "
            "fault and no abort is sent. It clears when stable recovers."
        ]
    out = []
    if s.verdict == PASS:
        out.append(
            f"Passed: the canary's rate is shown below {s.tol_ratio:g}x stable's or stable's + "
            f"{s.tol_diff * 100:.2f} points (bound {bound_text(s)}). Only an abort can change it."
        )
        return out
    more = None if s.needed_bad is None else max(0, s.needed_bad - s.canary_bad)
    if more:
        rate = s.canary_requests / row.age_s if row.age_s > 0 else 0.0
        out.append(
            f"An abort needs >= {more} more canary {BAD.get(s.signal, s.signal)} (at least "
            f"{s.needed_bad} in all at this canary share)"
            + (f"; the canary serves about {rate:.1f} requests/s." if rate > 0 else ".")
        )
    else:
        out.append(
            f"An abort needs the statistic to rise by {max(0.0, s.threshold - s.statistic):.2f} "
            f"more: more canary {BAD.get(s.signal, s.signal)} than stable's share would explain."
        )
    out.append(
        f"A pass needs the bound ({bound_text(s)}) below {s.tol_ratio:g}x or +"
        f"{s.tol_diff * 100:.2f} points: more canary traffic without "
        f"{BAD.get(s.signal, s.signal)}."
    )
    return out


# --- history (for --plot) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """One env's successive snapshots of its current revision, in time order, as series."""

    t: list[float]  # seconds into the canary
    statistic: list[list[float]]  # [signal][i]
    threshold: float
    canary_ratio: list[list[float]]  # cumulative bad/total, [signal][i]
    stable_ratio: list[list[float]]
    verdicts: list[str]
    signals: tuple[str, ...]


def history(snapshots: Sequence[VerdictSnapshot]) -> History:
    """The series of the latest revision among `snapshots` (any order)."""
    if not snapshots:
        return History([], [], math.nan, [], [], [], ())
    ordered = sorted(snapshots, key=lambda s: s.decided_at)
    current = ordered[-1].pod_hash
    ordered = [s for s in ordered if s.pod_hash == current]
    names = tuple(s.signal for s in ordered[-1].signals)
    n = len(names)
    return History(
        t=[s.since_canary_start_s for s in ordered],
        statistic=[[s.signals[i].abort_statistic for s in ordered] for i in range(n)],
        threshold=ordered[-1].signals[0].abort_threshold if n else math.nan,
        canary_ratio=[
            [s.signals[i].canary_bad / max(s.signals[i].canary_requests, 1) for s in ordered]
            for i in range(n)
        ],
        stable_ratio=[
            [s.signals[i].stable_bad / max(s.signals[i].stable_requests, 1) for s in ordered]
            for i in range(n)
        ],
        verdicts=[s.verdict for s in ordered],
        signals=names,
    )


# --- the fleet board (agents/ui.py) ---------------------------------------------------------


def board(rows: Sequence[StatusRow], aborts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The board's JSON: releases (most urgent first) with their environments, and the abort
    commands seen (newest first), each with its evidence."""
    releases: dict[str, list[StatusRow]] = {}
    for row in rows:  # already most urgent first
        releases.setdefault(row.release or "(unknown)", []).append(row)
    counts = {v: sum(r.verdict == v for r in rows) for v in URGENCY}
    return {
        "canaries": len(rows),
        "counts": counts,
        "releases": [
            {
                "release": name,
                "verdict": envs[0].verdict,
                "environments": [r.to_json() for r in envs],
            }
            for name, envs in releases.items()
        ],
        "aborts": sorted(aborts, key=lambda a: -float(a.get("decided_at", 0.0))),
    }
