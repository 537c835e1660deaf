"""The verdict publisher: changed verdicts at once, unchanged evidence at most every refresh_s."""

from __future__ import annotations

import itertools

from agents.verdicts import VerdictPublisher
from streams.events import RequestLine, RolloutState, encode_request_line
from streams.eventtime import EventTimeSettings
from streams.fleet import Fleet
from streams.promotion import VerdictSnapshot


def lines(ns: str, pod_hash: str, n: int, errors: int, t: float) -> list[bytes]:
    return [
        encode_request_line(
            RequestLine(t, ns, f"web-{pod_hash}", pod_hash, 503 if i < errors else 200, 20.0)
        )
        for i in range(n)
    ]


async def test_changed_verdicts_go_out_at_once_and_unchanged_ones_at_most_every_refresh() -> None:
    sent: list[tuple[bytes, VerdictSnapshot]] = []

    async def send(key: bytes, value: bytes) -> None:
        sent.append((key, VerdictSnapshot.decode(value)))

    fleet = Fleet(event_time=EventTimeSettings(enabled=False))  # a verdict per pass
    fleet.apply_rollout(RolloutState("shop", "web", "c1", "s1", canary_weight=20), now=0.0)
    publisher = VerdictPublisher(send, refresh_s=5.0)
    verdicts = []
    for t in range(1, 200):
        fleet.count(lines("shop", "c1", 40, 0, t) + lines("shop", "s1", 160, 0, t), float(t))
        fleet.evaluate(float(t))
        await publisher.tick(fleet, float(t))
        verdicts.append(sent[-1][1].verdict)
        if sent[-1][1].verdict == "pass":
            break
    assert sent[0][0] == b"shop/web"
    first_pass = verdicts.index("pass")
    # Inconclusive snapshots every 5 s at most (the first at once), then the pass at once.
    times = [snapshot.decided_at for _, snapshot in sent]
    assert times[0] == 1.0
    assert all(b - a >= 5.0 for a, b in itertools.pairwise(times[:-1])), times
    assert times[-1] == float(first_pass + 1)
    assert sent[-1][1].pod_hash == "c1"
    # A new revision is a change: out at the next pass.
    fleet.apply_rollout(RolloutState("shop", "web", "c2", "s1", canary_weight=20), now=300.0)
    fleet.evaluate(300.0)
    assert await publisher.tick(fleet, 300.0) == 1
    assert (sent[-1][1].pod_hash, sent[-1][1].verdict) == ("c2", "inconclusive")
    assert await publisher.tick(fleet, 301.0) == 0


async def test_a_worker_that_only_knows_a_canary_publishes_it_once_and_never_refreshes() -> None:
    """Global view: both workers know the canary, only the judge counts its lines. The other
    worker's snapshot goes out once per revision and is never refreshed, so it cannot overwrite
    the judge's abort in the compacted topic."""
    sent: list[VerdictSnapshot] = []

    async def send(key: bytes, value: bytes) -> None:
        sent.append(VerdictSnapshot.decode(value))

    bystander = Fleet()
    bystander.apply_rollout(RolloutState("shop", "web", "c1", "s1", canary_weight=20), now=0.0)
    publisher = VerdictPublisher(send, refresh_s=5.0)
    for t in range(1, 30):
        bystander.evaluate(float(t))
        await publisher.tick(bystander, float(t))
    assert [(s.pod_hash, s.verdict) for s in sent] == [("c1", "inconclusive")]
    bystander.apply_rollout(RolloutState("shop", "web", "c2", "s1", canary_weight=20), now=40.0)
    for t in range(40, 60):
        bystander.evaluate(float(t))
        await publisher.tick(bystander, float(t))
    assert [s.pod_hash for s in sent] == ["c1", "c2"]
