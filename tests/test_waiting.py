"""Refused canaries waiting for their lines: small entries, found by their pods' keys."""

from __future__ import annotations

import sys

from streams.events import RolloutState, decode_rollout_state, encode_rollout_state
from streams.fleet import Fleet, FleetLimits
from streams.requestlog import pack_key
from streams.waiting import WaitingCanaries
from tests.test_fleet import lines


def key(namespace: str, pod_hash: str) -> bytes:
    packed = pack_key(namespace, pod_hash)
    assert packed is not None
    return packed.rstrip(b"\0")


def state(name: str, canary: str = "c", stable: str = "s") -> RolloutState:
    return RolloutState(name, "web", f"{canary}-{name}", f"{stable}-{name}", canary_weight=20)


def test_a_waiting_canary_is_found_by_either_pod_key_and_comes_back_whole() -> None:
    waiting = WaitingCanaries()
    shop = RolloutState("shop", "web", "c1", "s1", canary_weight=20, step_index=2, observed_at=5.5)
    waiting.add(shop, bound=10)
    assert waiting.envs_of([key("shop", "c1"), key("other", "c1")]) == {"shop/web"}
    assert waiting.envs_of([key("shop", "s1")]) == {"shop/web"}
    assert waiting.get("shop/web") == shop
    waiting.remove("shop/web")
    assert len(waiting) == 0 and waiting.envs_of([key("shop", "c1")]) == set()


def test_a_newer_snapshot_replaces_the_keys_of_the_older_one() -> None:
    waiting = WaitingCanaries()
    waiting.add(RolloutState("shop", "web", "c1", "s1"), bound=10)
    waiting.add(RolloutState("shop", "web", "c2", "s1"), bound=10)
    assert waiting.envs_of([key("shop", "c1")]) == set()
    assert waiting.envs_of([key("shop", "c2"), key("shop", "s1")]) == {"shop/web"}
    assert len(waiting) == 1


def test_past_the_bound_the_oldest_gives_way() -> None:
    waiting = WaitingCanaries()
    for name in ("a", "b", "c"):
        waiting.add(state(name), bound=2)
    assert "a/web" not in waiting and "b/web" in waiting and "c/web" in waiting
    assert waiting.envs_of([key("a", "c-a")]) == set()


def test_an_entry_is_the_encoded_snapshot_not_the_object() -> None:
    shop = state("shop")
    raw = encode_rollout_state(shop)
    assert decode_rollout_state(raw) == shop
    # The reason for keeping it encoded: a third of the object's size (slots, strings).
    object_bytes = sys.getsizeof(shop) + sum(
        sys.getsizeof(getattr(shop, name)) for name in shop.__slots__
    )
    assert sys.getsizeof(raw) * 2 < object_bytes, (sys.getsizeof(raw), object_bytes)


def test_admitting_a_canary_may_push_out_another_that_was_about_to_be_admitted() -> None:
    # Cap 1, two waiting. Admitting "a" evicts the idle tracked canary, which waits in turn and
    # pushes the oldest waiting one, "b", out: "b"'s lines in the same batch find nothing.
    fleet = Fleet(limits=FleetLimits(max_canaries=1, max_waiting=2, hold_s=0.0))
    assert fleet.apply_rollout(state("idle"), now=0.0)
    assert not fleet.apply_rollout(state("b"), now=0.0)
    assert not fleet.apply_rollout(state("a"), now=0.0)
    report = fleet.count(lines("a", "c-a", 2, 0, 1.0) + lines("b", "c-b", 3, 0, 1.0), 1.0)
    assert report.counted == 2 and report.unattributed == 3
    assert set(fleet.attribution.row_of_env) == {"a/web"}
    assert fleet.evicted_canaries == 1
