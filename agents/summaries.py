"""The worker's hook for release-level analysis: rollout states and changed `EnvSummary`s out to
`<prefix>.summaries`, partitioned by release (`streams/releasefeed.py`, agents/releases.py).

- `forward_state(previous, state)`: from `track_rollouts` (the worker that owns the rollouts
  partition of the environment, so exactly one); a state with a release goes to its release's
  partition, and when the environment leaves a cohort (another release, or its canary ended)
  the previous state, marked ended, goes to the old release's partition;
- a timer every `summary_every_s`: the summaries of the environments whose lines this worker
  counted and whose counts changed;
- `own_abort(command)`: False for aborts the worker leaves to e-BH (fleet_control = ebh).
"""

from __future__ import annotations

import faust

from agents.kafka_admin import partition_for_key
from agents.settings import Settings
from streams.events import AbortCommand, RolloutState
from streams.fleet import Fleet
from streams.releasefeed import (
    FeedRecord,
    SummaryFeed,
    encode_feed_record,
    keep_own_abort,
    left_cohort,
    state_record,
    summary_record,
)


class SummaryPublisher:
    def __init__(self, settings: Settings, fleet: Fleet, app: faust.App) -> None:
        self.settings = settings
        self.feed = SummaryFeed(fleet, settings.release)
        self.topic = app.topic(settings.topics.summaries, key_type=bytes, value_type=bytes)
        self.published = 0

    async def _send(self, record: FeedRecord) -> None:
        partition = partition_for_key(record.release.encode(), self.settings.partitions)
        await self.topic.send(key=record.key, value=encode_feed_record(record), partition=partition)
        self.published += 1

    async def forward_state(self, previous: RolloutState | None, state: RolloutState) -> None:
        if previous is not None and (leave := left_cohort(previous, state)) is not None:
            await self._send(state_record(leave))
        if state.release:
            await self._send(state_record(state))

    async def publish(self, now: float) -> None:
        for summary in self.feed.summaries(now):
            await self._send(summary_record(summary))

    def own_abort(self, command: AbortCommand) -> bool:
        return keep_own_abort(command.release, self.settings.release.fleet_control)
