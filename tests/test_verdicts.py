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


async def test_a_send_failing_half_way_leaves_the_rest_due_and_the_sent_ones_not() -> None:
    sent: list[str] = []
    failures = [2]  # the third send of the first tick fails

    async def send(key: bytes, value: bytes) -> None:
        if len(sent) in failures:
            failures.clear()
            raise RuntimeError("broker away")
        sent.append(key.decode())

    fleet = Fleet()
    envs = [f"shop-{i}" for i in range(5)]
    for i, ns in enumerate(envs):
        fleet.apply_rollout(RolloutState(ns, "web", f"c{i}", f"s{i}", canary_weight=20), 0.0)
    for i, ns in enumerate(envs):
        fleet.count(lines(ns, f"c{i}", 10, 0, 1.0) + lines(ns, f"s{i}", 40, 0, 1.0), 1.0)
    fleet.evaluate(1.0)
    publisher = VerdictPublisher(send, refresh_s=5.0)
    try:
        await publisher.tick(fleet, 1.0)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failed send was swallowed")
    assert len(sent) == 2 and publisher.published == 2
    assert await publisher.tick(fleet, 2.0) == 3  # only the three not yet sent
    assert sorted(sent) == sorted(f"{ns}/web" for ns in envs)
    assert await publisher.tick(fleet, 3.0) == 0
