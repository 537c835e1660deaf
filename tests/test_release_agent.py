"""The release agent's core (agents/releaseagent.py) without a broker: decisions, what it latches in
its table, and a successor restored from that table (in any order) that sends nothing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import random

from prometheus_client import CollectorRegistry

from agents.releaseagent import ReleaseAgent, ReleaseMetrics, release_partition
from agents.settings import Settings, Topics
from streams.events import decision_id_for, decode_abort_command
from streams.release import ReleaseSettings
from streams.releasefeed import encode_feed_record, state_record, summary_record
from streams.releaserecords import decode_release_verdict, release_decision_id
from tests.test_release import state, summary

PARTITIONS = 4
SETTINGS = Settings(topics=Topics("t"), partitions=PARTITIONS, replication_factor=1)
RS = ReleaseSettings()


class Broker:
    """What went out (topic, key, value) and the table (its latest entry per key)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.table: dict[bytes, bytes] = {}
        self.fail_puts = 0

    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None) -> None:
        self.sent.append((topic, key, value))

    async def put(self, partition: int, key: bytes, value: bytes) -> None:
        if self.fail_puts:
            self.fail_puts -= 1
            raise ConnectionError("changelog not acknowledged")
        self.table[key] = value

    def commands(self) -> list[str]:
        return [decode_abort_command(v).decision_id for t, _, v in self.sent if t == "t.commands"]

    def verdicts(self) -> list[str]:
        return [decode_release_verdict(v).release for t, _, v in self.sent if t == "t.releases"]


def agent_on(broker: Broker) -> ReleaseAgent:
    agent = ReleaseAgent(SETTINGS, ReleaseMetrics(CollectorRegistry()), broker.send, broker.put)
    agent.restore(range(PARTITIONS), list(broker.table.items()))
    return agent


def feed(agent: ReleaseAgent, broker: Broker, release: str, envs: list[str], gain: float) -> None:
    """What the stream does: apply each record, keep it in the table."""
    p = release_partition(release, PARTITIONS)
    for env in envs:
        st = dataclasses.replace(state(env, release), epoch="41")
        for record in (state_record(st), summary_record(summary(env, release, RS, gain))):
            applied = agent.apply(p, 0, encode_feed_record(record))
            assert applied is not None
            broker.table[applied.key] = encode_feed_record(applied)


def test_a_successor_restored_from_the_table_decides_and_sends_nothing_again() -> None:
    broker = Broker()
    first = agent_on(broker)
    bad = [f"b{i}/web" for i in range(15)]
    feed(first, broker, "bad:2", bad, gain=1.0)
    feed(first, broker, "ok:1", [f"h{i}/web" for i in range(15)], gain=-1.0)
    asyncio.run(first.evaluate())
    ids = broker.commands()
    assert sorted(ids) == sorted(
        decision_id_for(e.split("/")[0], "web", "c1", "", "41") for e in bad
    )
    assert broker.verdicts() == ["bad:2"]
    asyncio.run(first.evaluate())
    assert len(broker.commands()) == len(bad) and broker.verdicts() == ["bad:2"]
    # The actuator applied them; the states say aborted: each abort is triaged once.
    p = release_partition("bad:2", PARTITIONS)
    for env in bad:
        aborted = state_record(dataclasses.replace(state(env, "bad:2", aborted=True), epoch="41"))
        applied = first.apply(p, 0, encode_feed_record(aborted))
        assert applied is not None
        broker.table[applied.key] = encode_feed_record(applied)
    asyncio.run(first.evaluate())
    triaged = [k for t, k, _ in broker.sent if t == "t.triage"]
    assert sorted(triaged) == sorted(e.encode() for e in bad)

    # A successor restores the table in any order (the changelog's), and sends nothing.
    items = list(broker.table.items())
    random.Random(3).shuffle(items)
    successor = ReleaseAgent(SETTINGS, ReleaseMetrics(CollectorRegistry()), broker.send, broker.put)
    successor.restore(range(PARTITIONS), items)
    before = len(broker.sent)
    for _ in range(3):
        asyncio.run(successor.evaluate())
    # Only the release passes' snapshots may go out again: they are refreshed by design (the
    # gate reads their age), and a snapshot decides nothing.
    again = [sent for sent in broker.sent[before:] if sent[0] != "t.verdicts"]
    assert again == [], again
    assert successor.metrics.halts.labels("errors")._value.get() == 0  # no second decision
    # An environment that joins the halted release gets one command under the same decision.
    feed(successor, broker, "bad:2", ["b99/web"], gain=1.0)
    asyncio.run(successor.evaluate())
    asyncio.run(successor.evaluate())
    new = broker.sent[before:]
    assert [decode_abort_command(v).env for t, _, v in new if t == "t.commands"] == ["b99/web"]
    assert [t for t, _, _ in new if t == "t.triage"] == [], "no triage published again"
    (update,) = [decode_release_verdict(v) for t, _, v in new if t == "t.releases"]
    assert update.decision_id == release_decision_id("bad:2") and len(update.targets) == 16


def test_a_command_whose_table_entry_failed_is_sent_again_only_by_the_next_pass() -> None:
    broker = Broker()
    agent = agent_on(broker)
    feed(agent, broker, "bad:2", [f"b{i}/web" for i in range(15)], gain=1.0)
    broker.fail_puts = 1  # one command acknowledged, its table entry not
    asyncio.run(agent.evaluate())
    assert broker.verdicts() == [], "no verdict before every command of it is latched"
    asyncio.run(agent.evaluate())
    ids = broker.commands()
    assert len(ids) == 16 and len(set(ids)) == 15  # the one retried, nothing else twice
    assert broker.verdicts() == ["bad:2"]
    assert agent.metrics.send_failures._value.get() == 1


def test_a_member_stops_judging_when_its_partitions_are_revoked() -> None:
    broker = Broker()
    agent = agent_on(broker)
    feed(agent, broker, "bad:2", [f"b{i}/web" for i in range(15)], gain=1.0)
    agent.revoke()
    asyncio.run(agent.evaluate())
    assert broker.sent == []
    # Restored with other partitions only: the release is another member's now.
    others = [p for p in range(PARTITIONS) if p != release_partition("bad:2", PARTITIONS)]
    agent.restore(others, list(broker.table.items()))
    asyncio.run(agent.evaluate())
    assert broker.sent == []
