"""Which rows are canaries, and which pod-template hash belongs to which row and arm.

A row is an environment (one Argo Rollout) with a canary in progress. A request line names its
namespace and its pod's `rollouts-pod-template-hash`; `lookup` turns that into a row and an arm
(canary or stable). Rows are reused once a canary ends, so memory follows the number of canaries
in progress, not the size of the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import canarywatch_linescan as linescan
import numpy as np
from numpy.typing import NDArray

from streams.events import RolloutState
from streams.requestlog import pack_key
from streams.windows import ARM_CANARY, ARM_STABLE

NOT_ATTRIBUTED = -1


@dataclass(slots=True)
class RowChange:
    """What `Attribution.apply` changed: rows whose evidence must start again from zero."""

    started: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)


class Attribution:
    def __init__(
        self, capacity: int = 64, *, rebuild_after: int = 1024, max_rows: int | None = None
    ) -> None:
        self.capacity = capacity
        # Rows never needed at once (the fleet's canary cap): growth stops there, not at the
        # next power of two (every per-row array of the fleet is this long).
        self.max_rows = max_rows
        self.rebuild_after = rebuild_after  # changes before the large index is rebuilt
        self.active = np.zeros(capacity, dtype=np.bool_)
        self.states: list[RolloutState | None] = [None] * capacity
        self.row_of_env: dict[str, int] = {}
        # (namespace, pod hash) -> row * 2 + arm: one dict probe per request line.
        self.code_of_hash: dict[tuple[str, str], int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        # The same map by packed key, for `lookup_keys`: a large index built now and then, plus
        # small ones of what changed since (keys set, keys deleted), so that a burst of new
        # canaries costs O(changes) per lookup batch, not a rebuild of everything each time.
        self._packed: dict[bytes, int] = {}
        self._index: linescan.KeyIndex | None = None
        self._added: dict[bytes, int] = {}
        self._removed: set[bytes] = set()
        self._delta: tuple[linescan.KeyIndex, linescan.KeyIndex] | None = None

    def lookup(self, namespace: str, pod_hash: str) -> int:
        """row * 2 + arm, or NOT_ATTRIBUTED when no canary of this namespace has that hash."""
        return self.code_of_hash.get((namespace, pod_hash), NOT_ATTRIBUTED)

    def lookup_keys(self, keys: NDArray[np.bytes_]) -> NDArray[np.int64]:
        """`lookup` for many keys packed by `streams.requestlog.pack_key` (one hash probe each)."""
        changes = len(self._added) + len(self._removed)
        if self._index is None or changes > max(self.rebuild_after, len(self._packed) // 8):
            self._index = linescan.KeyIndex(b"".join(self._packed), list(self._packed.values()))
            self._added.clear()
            self._removed.clear()
            self._delta = None
            changes = 0
        raw = keys.view(np.uint8)
        codes = np.frombuffer(self._index.lookup(raw), np.int64)
        if not changes:
            return codes
        if self._delta is None:
            self._delta = (
                linescan.KeyIndex(b"".join(self._added), list(self._added.values())),
                linescan.KeyIndex(b"".join(self._removed), [0] * len(self._removed)),
            )
        added, removed = self._delta
        if self._removed:
            codes[np.frombuffer(removed.lookup(raw), np.int64) != NOT_ATTRIBUTED] = NOT_ATTRIBUTED
        if self._added:
            newer = np.frombuffer(added.lookup(raw), np.int64)
            found = newer != NOT_ATTRIBUTED
            codes[found] = newer[found]
        return codes

    def _set_code(self, namespace: str, pod_hash: str, code: int) -> None:
        self.code_of_hash[(namespace, pod_hash)] = code
        key = pack_key(namespace, pod_hash)
        if key is not None:
            self._packed[key] = code
            self._added[key] = code
            self._removed.discard(key)
            self._delta = None

    def _delete_code(self, namespace: str, pod_hash: str) -> None:
        del self.code_of_hash[(namespace, pod_hash)]
        key = pack_key(namespace, pod_hash)
        if key is not None:
            del self._packed[key]
            self._added.pop(key, None)
            self._removed.add(key)
            self._delta = None

    def apply(self, state: RolloutState) -> RowChange:
        """Take a new snapshot of one Rollout into account."""
        change = RowChange()
        env = state.env
        row = self.row_of_env.get(env)
        if row is not None:
            old = self.states[row]
            assert old is not None
            same_revision = (
                state.canary_in_progress
                and old.current_pod_hash == state.current_pod_hash
                and old.stable_hash == state.stable_hash
            )
            if same_revision:
                self.states[row] = state  # weight or step moved on; evidence continues
                return change
            self._release(row)
            change.ended.append(row)
        if state.canary_in_progress:
            row = self._allocate()
            self.row_of_env[env] = row
            self.states[row] = state
            self.active[row] = True
            self._set_code(state.namespace, state.current_pod_hash, row * 2 + ARM_CANARY)
            self._set_code(state.namespace, state.stable_hash, row * 2 + ARM_STABLE)
            change.started.append(row)
        return change

    def remove(self, env: str) -> int:
        """Stop attributing to this environment; returns the row it had."""
        row = self.row_of_env[env]
        self._release(row)
        return row

    def active_rows(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.active)

    def _allocate(self) -> int:
        if not self._free:
            old = self.capacity
            grown = old * 2
            if self.max_rows is not None and old < self.max_rows:
                grown = min(grown, self.max_rows)
            self.capacity = grown
            self.active = np.concatenate([self.active, np.zeros(grown - old, dtype=np.bool_)])
            self.states.extend([None] * (grown - old))
            self._free = list(range(self.capacity - 1, old - 1, -1))
        return self._free.pop()

    def _release(self, row: int) -> None:
        state = self.states[row]
        assert state is not None
        for pod_hash in (state.current_pod_hash, state.stable_hash):
            key = (state.namespace, pod_hash)
            if self.code_of_hash.get(key, NOT_ATTRIBUTED) // 2 == row:
                self._delete_code(*key)
        del self.row_of_env[state.env]
        self.states[row] = None
        self.active[row] = False
        self._free.append(row)
