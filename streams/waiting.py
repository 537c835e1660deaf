"""Canaries refused by the cap, waiting for their request lines (`Fleet`, streams/fleet.py).

A flood of snapshots fills this list up to its bound (`FleetLimits.max_waiting`, 50,000 by
default), so each entry is kept small: the snapshot encoded as on the wire (~290 bytes, where a
`RolloutState` object takes ~830), decoded again only when its lines admit it; and the packed
(namespace, hash) key of each of its pods, pointing at the environment's name.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.events import RolloutState, decode_rollout_state, encode_rollout_state
from streams.requestlog import pack_key


def _pod_keys(state: RolloutState) -> set[bytes]:
    """The keys the lines of `state`'s pods carry (`Columns.keys`, NUL padding dropped)."""
    keys = set()
    for pod_hash in (state.current_pod_hash, state.stable_hash):
        key = pack_key(state.namespace, pod_hash) if pod_hash else None
        if key is not None:
            keys.add(key.rstrip(b"\0"))
    return keys


class WaitingCanaries:
    """Refused canaries' last snapshots, oldest first, found by the keys of their pods' lines."""

    def __init__(self) -> None:
        self._snapshots: dict[str, bytes] = {}  # env -> encoded snapshot, oldest first
        self._env_of_key: dict[bytes, str] = {}

    def __len__(self) -> int:
        return len(self._snapshots)

    def __contains__(self, env: object) -> bool:
        return env in self._snapshots

    def add(self, state: RolloutState, bound: int) -> None:
        """Remember `state` in place of its earlier snapshot; the oldest give way past `bound`."""
        self.remove(state.env)
        while len(self._snapshots) >= max(1, bound):
            self.remove(next(iter(self._snapshots)))
        self._snapshots[state.env] = encode_rollout_state(state)
        for key in _pod_keys(state):
            self._env_of_key[key] = state.env

    def remove(self, env: str) -> None:
        raw = self._snapshots.pop(env, None)
        if raw is None:
            return
        for key in _pod_keys(decode_rollout_state(raw)):
            if self._env_of_key.get(key) == env:
                del self._env_of_key[key]

    def get(self, env: str) -> RolloutState | None:
        raw = self._snapshots.get(env)
        return None if raw is None else decode_rollout_state(raw)

    def envs_of(self, keys: Iterable[bytes]) -> set[str]:
        """The waiting canaries some of `keys` (NUL padding dropped, as numpy gives them) are of."""
        env_of_key = self._env_of_key
        return {env for key in keys if (env := env_of_key.get(key)) is not None}
