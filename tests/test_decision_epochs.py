"""Decisions that are delivered before they count, and judged afresh after a retry (epochs)."""

from __future__ import annotations

import dataclasses

import pytest

from agents.worker import with_epoch
from streams.events import (
    DecodeError,
    RequestLine,
    RolloutState,
    check_decision_id,
    decision_id_for,
    decode_rollout_state,
    encode_request_line,
    encode_rollout_state,
    epoch_of,
)
from streams.fleet import Fleet


def lines(ns: str, pod_hash: str, n: int, errors: int, t: float) -> list[bytes]:
    return [
        encode_request_line(
            RequestLine(t, ns, f"web-{pod_hash}", pod_hash, 503 if i < errors else 200, 20.0)
        )
        for i in range(n)
    ]


def canary(epoch: str, *, aborted: bool = False) -> RolloutState:
    return RolloutState("shop", "web", "c1", "s1", canary_weight=20, aborted=aborted, epoch=epoch)


def drive_to_abort(fleet: Fleet, t0: float, *, await_delivery: bool) -> tuple[float, list[str]]:
    for t in range(int(t0) + 1, int(t0) + 60):
        fleet.count(lines("shop", "c1", 20, 10, t) + lines("shop", "s1", 80, 0, t), t)
        _, commands = fleet.evaluate(float(t), await_delivery=await_delivery)
        if commands:
            return float(t), [c.decision_id for c in commands]
    raise AssertionError("no abort")


def test_an_undelivered_decision_is_returned_again_until_delivered() -> None:
    fleet = Fleet()
    fleet.apply_rollout(canary("7"), now=0.0)
    t, ids = drive_to_abort(fleet, 0.0, await_delivery=True)
    assert ids == ["shop/web@c1#7"]
    # The send failed: nothing was decided, the next pass returns the same decision.
    assert fleet.decided == set()
    _, again = fleet.evaluate(t + 1, await_delivery=True)
    assert [c.decision_id for c in again] == ids
    fleet.delivered(again[0])
    assert fleet.evaluate(t + 2, await_delivery=True)[1] == []


def test_a_retry_starts_a_new_epoch_that_is_judged_again() -> None:
    fleet = Fleet()
    fleet.apply_rollout(canary("7"), now=0.0)
    t, first = drive_to_abort(fleet, 0.0, await_delivery=False)
    assert first == ["shop/web@c1#7"]
    # The controller aborts: the canary ends; `retry` brings the same pod hash back.
    fleet.apply_rollout(canary("7", aborted=True), now=t + 1)
    fleet.apply_rollout(canary("9"), now=t + 2)
    _, commands = fleet.evaluate(t + 2)
    assert commands == [], "the retry starts from zero evidence"
    _, second = drive_to_abort(fleet, t + 2, await_delivery=False)
    assert second == ["shop/web@c1#9"], "one command per epoch"


def test_decision_ids_with_epochs_read_back() -> None:
    assert decision_id_for("shop", "web", "c1", "eu1", "123") == "eu1:shop/web@c1#123"
    assert check_decision_id(b"eu1:shop/web@c1#123") == "eu1:shop/web@c1#123"
    assert check_decision_id(b"shop/web@c1") == "shop/web@c1"  # written before epochs
    with pytest.raises(DecodeError):
        check_decision_id(b"shop/web@c1#a b")


def test_the_epoch_is_the_starting_snapshots_and_is_kept_while_the_revision_runs() -> None:
    start = dataclasses.replace(canary(""), resource_version="100")
    stored = with_epoch(start, None)
    assert stored.epoch == "100" == epoch_of(start)
    later = dataclasses.replace(canary(""), resource_version="250", canary_weight=50)
    kept = with_epoch(later, encode_rollout_state(stored))
    assert kept.epoch == "100" and kept.canary_weight == 50
    assert decode_rollout_state(encode_rollout_state(kept)).epoch == "100"
    # A new revision (another pod hash) gets a new epoch.
    other = dataclasses.replace(later, current_pod_hash="c2")
    assert with_epoch(other, encode_rollout_state(stored)).epoch == "250"
    # Resource versions that are not plain tokens become a digest; none: the observation time.
    assert epoch_of(dataclasses.replace(start, resource_version="a b")).startswith("h")
    assert epoch_of(dataclasses.replace(start, resource_version="", observed_at=2.5)) == "t2500"
