"""The rollout view applies changelog records to the fleet, validating each one."""

from __future__ import annotations

import orjson
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from agents.metrics import WorkerMetrics
from agents.settings import Settings
from agents.view import RolloutView
from streams.events import RequestLine, RolloutState, encode_request_line, encode_rollout_state
from streams.fleet import Fleet, FleetLimits


def record(offset: int, key: bytes, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "cw-rollout-state-changelog", 0, offset, 0, 0, key, value, None, len(key), 0, ()
    )


async def noop() -> None:
    return None


def view_of(fleet: Fleet) -> tuple[RolloutView, CollectorRegistry]:
    registry = CollectorRegistry()
    view = RolloutView(
        Settings(), fleet, WorkerMetrics(registry), "cw-rollout-state-changelog", on_restored=noop
    )
    return view, registry


async def test_records_are_validated_and_tombstones_forget() -> None:
    fleet = Fleet()
    view, registry = view_of(fleet)
    good = RolloutState("shop", "web", "c1", "s1")
    raw = orjson.loads(encode_rollout_state(good))
    view.apply(
        [
            record(0, b"shop/web", encode_rollout_state(good)),
            record(1, b"a/web", orjson.dumps({**raw, "namespace": "a", "stable_hash": 5})),
            record(2, b"b/web", orjson.dumps([1])),
            record(3, b"other/web", encode_rollout_state(RolloutState("c", "web", "c3", "s3"))),
        ],
        1.0,
    )
    assert set(fleet.attribution.row_of_env) == {"shop/web"}
    for reason, n in (("wrong_type", 1.0), ("not_object", 1.0), ("bad_key", 1.0)):
        labels = {"table": "rollout-state", "reason": reason}
        assert registry.get_sample_value("canarywatch_restore_refused_total", labels) == n
    # A refused record replaces what was there: the environment is forgotten, not kept stale.
    view.apply([record(4, b"shop/web", b"{not json")], 2.0)
    assert fleet.attribution.row_of_env == {}
    view.apply([record(5, b"shop/web", encode_rollout_state(good))], 3.0)
    view.apply([record(6, b"shop/web", None)], 4.0)
    assert fleet.attribution.row_of_env == {}


async def test_the_cap_is_counted() -> None:
    fleet = Fleet(limits=FleetLimits(max_canaries=3))
    view, registry = view_of(fleet)
    states = [RolloutState(f"ns-{i}", "web", "c", "s") for i in range(5)]
    view.apply(
        [record(i, s.env.encode(), encode_rollout_state(s)) for i, s in enumerate(states)], 1.0
    )
    assert len(fleet.attribution.row_of_env) == 3
    assert registry.get_sample_value("canarywatch_canaries_refused_total") == 2.0
    # A refused canary whose lines arrive takes an idle one's place; the view counts it.
    line = encode_request_line(RequestLine(1.0, "ns-4", "web-c", "c", 200, 20.0))
    assert fleet.count([line], 2.0).counted == 1
    view.apply([], 2.0)
    assert "ns-4/web" in fleet.attribution.row_of_env
    assert registry.get_sample_value("canarywatch_canaries_evicted_total") == 1.0


def decision(offset: int, key: bytes, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "cw-abort-decisions-changelog", 1, offset, 0, 0, key, value, None, len(key), 0, ()
    )


async def test_every_decision_on_the_decisions_changelog_is_known() -> None:
    fleet = Fleet()
    registry = CollectorRegistry()
    view = RolloutView(
        Settings(),
        fleet,
        WorkerMetrics(registry),
        "cw-rollout-state-changelog",
        on_restored=noop,
        decisions_topic="cw-abort-decisions-changelog",
    )
    view.apply(
        [
            decision(0, b"shop/web@c1", b"1764150000.000000"),
            decision(1, b"eu-1:pay/api@c2#3", b"1764150001.000000"),
            decision(2, b"not a decision id", b"1.0"),
            decision(3, b"shop/web@c1", None),  # compaction's tombstone: still decided
            record(4, b"shop/web", encode_rollout_state(RolloutState("shop", "web", "c1", "s1"))),
        ],
        1.0,
    )
    assert fleet.decided >= {"shop/web@c1", "eu-1:pay/api@c2#3"}
    assert "not a decision id" not in fleet.decided
    labels = {"table": "abort-decisions", "reason": "bad_format"}
    assert registry.get_sample_value("canarywatch_restore_refused_total", labels) == 1.0
    assert set(fleet.attribution.row_of_env) == {"shop/web"}
