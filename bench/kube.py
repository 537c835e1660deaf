"""`make bench-kube`: actuation on a real broker, two real kube-apiservers (two clusters) and the
real Argo Rollouts controller in each, one run (issue 12).

Both clusters hold the same Rollouts (namespace, names), each a basic canary the controller has
paused at its first step. One actuator per cluster reads one commands topic (own consumer group).

- **Aborts** (``--aborts``): a command for cluster A is produced at its `decided_at`; the
  bench polls cluster A's Rollout and notes when `status.abort` is first true and when the
  controller's `RolloutAborted` condition (phase Degraded, abortedAt) appears: actuation alone,
  decision -> RolloutAborted. After each, cluster B's twin must still be an untouched paused
  canary (else `cross_cluster_aborts`).
- **Race** (``--races``): a new template is deployed between the actuator's judgement and its
  patch (the patch carries the judged resourceVersion); the new revision must never be aborted
  (else `wrong_revision_aborts`).

- **From requests** (``--requests``, >= 20): a worker judges broken canaries of cluster A from
  request lines; first bad request -> decision (the statistics: as much evidence as they need)
  -> status.abort (actuator) -> RolloutAborted (controller).

`controller_abort_*` is what the issue asks: a broken canary's first bad request -> the
controller's RolloutAborted, over the ``--requests`` canaries. The statistics' floor for that
canary (slices of `max_slice_s`, each worth at most 1 + max_bet(1-theta0)/theta0) is printed
beside it. The last line is

    kube-e2e: controller_abort_p50_s=A controller_abort_p99_s=B wrong_revision_aborts=0
      cross_cluster_aborts=0   (one line)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from agents.actuator import Actuator, ActuatorMetrics, Outcome
from agents.localkafka import LocalKafka, free_ports
from agents.processes import WorkerProcess, free_port, poll_until
from agents.rolloutapi import KubeRolloutApi
from agents.settings import Settings
from bench.throughput import sum_metric
from streams.actuation import RetryPolicy
from streams.decisions import DecisionSettings
from streams.events import (
    POD_HASH_LABEL,
    RolloutState,
    decision_id_for,
    decode_abort_command,
    encode_abort_command,
    encode_rollout_state,
)
from streams.eventtime import EventTimeSettings
from streams.rollouts import GROUP, PLURAL, VERSION
from tests.integration.test_actuator import (
    command_for,
    create_topics,
    ensure_namespace,
    produce,
    read_rollout,
    running,
    unique_settings,
    wait_committed,
)
from tests.integration.test_argo_controller import (
    IMAGE,
    NAMESPACE,
    NewTemplateBeforePatch,
    aborted_by_controller,
    manifest,
    paused_canary,
    reconciled,
    set_image,
)
from tests.support.argo import ReplicaSetKubelet, RolloutsController, install_argo_crds
from tests.support.localkube import LocalKubeAPI
from tests.support.rbac import apply_rbac

CLUSTERS = ("eu-1", "us-2")
FAST = RetryPolicy(base_s=0.05, max_s=0.2, budget_s=60.0)
WITHIN_S = 60.0


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[LocalKubeAPI]:
    """etcd + kube-apiserver + CRDs + RBAC + the controller (namespaced) + the stand-in kubelet."""
    with LocalKubeAPI(workdir=workdir / "kube") as kube:
        install_argo_crds(kube)
        apply_rbac(kube)
        ensure_namespace(kube, NAMESPACE)
        controller = RolloutsController(kube, NAMESPACE, workdir / "argo", ("--qps=200",))
        with kube.client("admin") as admin, ReplicaSetKubelet(admin, NAMESPACE):
            controller.start()
            try:
                yield kube
            finally:
                controller.stop()


async def paused_canaries(admin: k8s.ApiClient, names: list[str]) -> dict[str, str]:
    """Create each Rollout at v1, wait until Healthy, deploy v2, wait until paused at 20 %:
    name -> canary pod hash. All at once (the controller works them in parallel)."""
    objects = k8s.CustomObjectsApi(admin)
    for name in names:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, manifest(name, "1.0.0")
        )
    await until_all(admin, names, lambda o: reconciled(o) and o["status"].get("phase") == "Healthy")
    for name in names:
        set_image(admin, name, "2.0.0")
    paused = await until_all(admin, names, paused_canary)
    return {name: obj["status"]["currentPodHash"] for name, obj in paused.items()}


async def stable_hashes(admin: k8s.ApiClient, names: list[str]) -> dict[str, str]:
    objs = [await asyncio.to_thread(read_rollout, admin, NAMESPACE, n) for n in names]
    return {n: o["status"]["stableRS"] for n, o in zip(names, objs, strict=True)}


def request_lines(
    name: str, canary: str, stable: str, good: int, bad: int, stable_good: int
) -> bytes:
    """`good` requests (200) and `bad` (503) to the canary, `stable_good` to stable: one NDJSON
    message."""
    now = time.time()
    out = []
    for pod_hash, count, status in (
        (canary, good, 200),
        (stable, stable_good, 200),
        (canary, bad, 503),
    ):
        line = orjson.dumps(
            {
                "ts": now,
                "namespace": NAMESPACE,
                "pod": f"{name}-{pod_hash}-0",
                POD_HASH_LABEL: pod_hash,
                "status": status,
                "duration_ms": 20.0,
            }
        )
        out.extend([line] * count)
    return b"\n".join(out)


async def until_all(admin: k8s.ApiClient, names: list[str], check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + WITHIN_S
    done: dict[str, Any] = {}
    while len(done) < len(names):
        for name in names:
            if name not in done:
                obj = await asyncio.to_thread(read_rollout, admin, NAMESPACE, name)
                if obj.get("status") and check(obj):
                    done[name] = obj
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names) - len(done)} Rollouts not there in {WITHIN_S:.0f}s")
        await asyncio.sleep(0.1)
    return done


async def watch_abort(admin: k8s.ApiClient, name: str) -> tuple[float, float]:
    """Wall times at which `status.abort` and the controller's RolloutAborted were first seen."""
    abort_seen = 0.0
    deadline = time.monotonic() + WITHIN_S
    while time.monotonic() < deadline:
        obj = await asyncio.to_thread(read_rollout, admin, NAMESPACE, name)
        now = time.time()
        if not abort_seen and obj.get("status", {}).get("abort") is True:
            abort_seen = now
        if aborted_by_controller(obj):
            return abort_seen or now, now
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{name}: no RolloutAborted within {WITHIN_S:.0f}s")


CANARY_SHARE = 0.2  # the broken canaries' share of their traffic (their setWeight)


def evidence_floor(decisions: DecisionSettings, share: float, event_time: EventTimeSettings) -> str:
    """The fewest slices a canary failing without pause needs, and so its time to a decision.
    A slice multiplies the evidence by at most 1 + max_bet(1-theta0)/theta0 (< 1/theta0, what
    makes a burst count once: docs/decisions.md); needed: ln(2/alpha) (each signal gets alpha/2)
    + ln(1/change_start) (the onset prior). The first slice, open since the last one closed,
    closes at the first pass; the next ones at `max_slice_s` each (the bad requests never leave
    a `quiet_s` gap)."""
    r0 = decisions.min_ratio
    theta0 = share * r0 / (share * r0 + 1 - share)
    per_slice = math.log1p(decisions.max_bet * (1 - theta0) / theta0)
    needed = math.log(2 / decisions.alpha) + math.log(1 / decisions.change_start)
    slices = math.ceil(needed / per_slice)
    floor = (slices - 1) * decisions.max_slice_s
    waits = (
        f"; event time judges a slice {event_time.allowed_lateness_s:g} s (allowed lateness) "
        f"+ up to {event_time.slice_s:g} s after it: {floor + event_time.allowed_lateness_s:g}"
        f"-{floor + event_time.allowed_lateness_s + event_time.slice_s:g} s"
        if event_time.enabled
        else ""
    )
    return (
        f"evidence floor at {share:.0%} canary share: {needed:.2f} nats, at most "
        f"{per_slice:.2f} a slice: {slices} slices, the first at once, then "
        f"{slices - 1} x {decisions.max_slice_s:g} s = {floor:g} s "
        f'from the first bad request to the decision (docs/decisions.md, "The floor"){waits}'
    )


class AbortWatch:
    """When each Rollout's `status.abort` and the controller's RolloutAborted were first seen,
    from one LIST of the namespace every ~20 ms. One poller, not one per canary: 24 pollers
    calling `asyncio.to_thread` in the bench's process took the default executor's threads (and
    the GIL) from the actuator running in the same event loop, and measured themselves (the
    worker-judged commands then waited 12 s p50 for `status.abort`)."""

    def __init__(self, admin: k8s.ApiClient) -> None:
        self.objects = k8s.CustomObjectsApi(admin)
        self.abort_seen: dict[str, float] = {}
        self.aborted_seen: dict[str, float] = {}
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            listed = cast(  # custom objects come back as untyped JSON (`object`)
                dict[str, Any],
                await asyncio.to_thread(
                    self.objects.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL
                ),
            )
            now = time.time()
            for obj in listed["items"]:
                name = obj["metadata"]["name"]
                if obj.get("status", {}).get("abort") is True:
                    self.abort_seen.setdefault(name, now)
                if aborted_by_controller(obj):
                    self.abort_seen.setdefault(name, now)
                    self.aborted_seen.setdefault(name, now)
            await asyncio.sleep(0.02)  # the poll's period, not a synchronisation

    async def aborted(self, name: str) -> tuple[float, float]:
        await poll_until(lambda: name in self.aborted_seen, WITHIN_S, f"{name}'s RolloutAborted")
        return self.abort_seen[name], self.aborted_seen[name]


def untouched_canary(obj: dict[str, Any], canary: str) -> bool:
    status = obj.get("status", {})
    return paused_canary(obj, canary) and not status.get("abortedAt")


def run(args: argparse.Namespace, workdir: Path) -> str:
    """Set up synchronously (the helpers poll with their own event loops), then the scenario."""
    port, controller_port = free_ports(2)
    kafka = LocalKafka(workdir / "kafka", port, controller_port)
    kafka.start(timeout=120)
    try:
        with (
            cluster(workdir / CLUSTERS[0]) as kube_a,
            cluster(workdir / CLUSTERS[1]) as kube_b,
            kube_a.client("admin") as admin_a,
            kube_b.client("admin") as admin_b,
            kube_a.client("actuator") as act_a,
            kube_b.client("actuator") as act_b,
        ):
            return asyncio.run(
                scenario(args, workdir, kafka.bootstrap, (admin_a, admin_b), (act_a, act_b))
            )
    finally:
        kafka.stop()


async def from_requests(
    bootstrap: str,
    base: Settings,
    worker: WorkerProcess,
    names: list[str],
    canaries: dict[str, str],
    admin: k8s.ApiClient,
) -> tuple[list[float], ...]:
    """The worker judges each canary from request lines (its Rollout's snapshot as the bridge
    would publish it, with the real hashes): a broken canary, half its requests failing, 20 % of
    the traffic (its weight), a message every 0.25 s. Per canary: first bad request -> decision
    (the worker's `decided_at`) -> the command on Kafka (its record's timestamp) -> status.abort
    -> RolloutAborted."""
    stables = await stable_hashes(admin, names)
    now = time.time()
    states = [
        RolloutState(
            NAMESPACE, name, canaries[name], stables[name], 1, "Paused", False, 20,
            IMAGE.format("2.0.0"), now, cluster=CLUSTERS[0],
        )
        for name in names
    ]  # fmt: skip
    await produce(
        bootstrap, base.topics.rollouts, [(s.env.encode(), encode_rollout_state(s)) for s in states]
    )
    await worker.wait_ready(within_s=180)
    port = worker.settings.metrics_port
    await poll_until(
        lambda: sum_metric([port], "canarywatch_canaries_in_progress") >= len(names),
        120,
        "the worker to track the canaries",
    )
    commands = AIOKafkaConsumer(
        base.topics.commands, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await commands.start()
    decided: dict[str, float] = {}
    sent: dict[str, float] = {}  # the command record's timestamp: when the worker sent it
    phases: tuple[list[float], ...] = ([], [], [], [], [])

    async def broken(name: str) -> None:
        """Half the canary's requests fail, a message every 0.25 s, until it is decided."""
        while name not in decided:
            bad = request_lines(name, canaries[name], stables[name], 5, 5, 40)  # 20 % canary
            await producer.send_and_wait(
                base.topics.requests, key=f"{NAMESPACE}/{name}".encode(), value=bad
            )
            await asyncio.sleep(0.25)  # pacing the traffic, not a synchronisation

    async def read_commands() -> None:
        while not set(names) <= set(decided):
            for records in (await commands.getmany(timeout_ms=200)).values():
                for record in records:
                    command = decode_abort_command(record.value or b"")
                    decided.setdefault(command.rollout, command.decided_at)
                    sent.setdefault(command.rollout, record.timestamp / 1000)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    senders = []
    watch = AbortWatch(admin)
    polling = asyncio.create_task(watch.run())
    try:
        reader = asyncio.create_task(read_commands())
        first_bad = {}
        watches = {}
        for name in names:
            watches[name] = asyncio.create_task(watch.aborted(name))
            first_bad[name] = time.time()
            senders.append(asyncio.create_task(broken(name)))
            await asyncio.sleep(0.5)  # spread the canaries' starts
        for name in names:
            abort_at, aborted_at = await watches[name]
            await poll_until(lambda n=name: n in decided, 30, f"{name}'s command")  # type: ignore[misc]
            for phase, value in zip(
                phases,
                (
                    decided[name] - first_bad[name],
                    sent[name] - decided[name],
                    abort_at - sent[name],
                    aborted_at - abort_at,
                    aborted_at - first_bad[name],
                ),
                strict=True,
            ):
                phase.append(value)
        await asyncio.wait_for(reader, 30)
    finally:
        watch.stop = True
        await polling
        for sender in senders:
            sender.cancel()
        await producer.stop()
        await commands.stop()
    return phases


async def scenario(
    args: argparse.Namespace,
    workdir: Path,
    bootstrap: str,
    admins: tuple[k8s.ApiClient, k8s.ApiClient],
    actuator_clients: tuple[k8s.ApiClient, k8s.ApiClient],
) -> str:
    base = unique_settings(bootstrap, workdir, "bench-kube")
    await create_topics(base)
    names = [
        f"web-{i:02d}-{uuid.uuid4().hex[:4]}"
        for i in range(args.aborts + args.races + args.requests)
    ]
    worker = WorkerProcess(
        Settings(
            replication_factor=base.replication_factor,
            bootstrap=bootstrap,
            app_id=f"{base.app_id}-w",
            topics=base.topics,
            partitions=1,
            metrics_port=free_port(),
            data_dir=workdir / "worker",
        ),
        workdir / "worker.log",
    )
    worker.start()
    try:
        return await with_worker(args, bootstrap, base, names, worker, admins, actuator_clients)
    finally:
        worker.stop()


async def with_worker(
    args: argparse.Namespace,
    bootstrap: str,
    base: Settings,
    names: list[str],
    worker: WorkerProcess,
    admins: tuple[k8s.ApiClient, k8s.ApiClient],
    actuator_clients: tuple[k8s.ApiClient, k8s.ApiClient],
) -> str:
    admin_a, admin_b = admins
    started = time.monotonic()
    canaries_a, canaries_b = await asyncio.gather(
        paused_canaries(admin_a, names), paused_canaries(admin_b, names)
    )
    print(f"{len(names)} paused canaries in each cluster in {time.monotonic() - started:.1f} s")
    actuators = [
        Actuator(
            dataclasses.replace(base, cluster=name),
            KubeRolloutApi(api),
            ActuatorMetrics(CollectorRegistry()),
            policy=FAST,
        )
        for name, api in zip(CLUSTERS, actuator_clients, strict=True)
    ]
    tp = TopicPartition(base.topics.commands, 0)
    to_patch, to_aborted, total = [], [], []
    cross = 0
    async with running(actuators[0]), running(actuators[1]):
        for i, name in enumerate(names[: args.aborts]):
            command = dataclasses.replace(
                command_for(NAMESPACE, name, canaries_a[name]),
                cluster=CLUSTERS[0],
                decision_id=decision_id_for(NAMESPACE, name, canaries_a[name], CLUSTERS[0]),
            )  # decided now: `decided_at` is the decision
            watching = asyncio.create_task(watch_abort(admin_a, name))
            await produce(
                bootstrap, base.topics.commands, [(name.encode(), encode_abort_command(command))]
            )
            abort_at, aborted_at = await watching
            to_patch.append(abort_at - command.decided_at)
            to_aborted.append(aborted_at - abort_at)
            total.append(aborted_at - command.decided_at)
            for act in actuators:
                await wait_committed(bootstrap, act.group_id, tp, i + 1)
            twin = await asyncio.to_thread(read_rollout, admin_b, NAMESPACE, name)
            if not untouched_canary(twin, canaries_b[name]):
                cross += 1
                print(f"CROSS-CLUSTER ABORT: {name} in {CLUSTERS[1]}: {twin.get('status')}")
        e2e = names[args.aborts + args.races :]
        from_first_bad: list[float] = []
        if e2e:
            phases = await from_requests(bootstrap, base, worker, e2e, canaries_a, admin_a)
            from_first_bad = phases[-1]
            for name in e2e:
                twin = await asyncio.to_thread(read_rollout, admin_b, NAMESPACE, name)
                if not untouched_canary(twin, canaries_b[name]):
                    cross += 1
                    print(f"CROSS-CLUSTER ABORT: {name} in {CLUSTERS[1]}: {twin.get('status')}")
            for label, xs in zip(
                (
                    "first bad request -> decision (worker)",
                    "decision -> command on Kafka (worker's send)",
                    "command on Kafka -> status.abort (actuator)",
                    "status.abort -> RolloutAborted (controller)",
                    "first bad request -> RolloutAborted",
                ),
                phases,
                strict=True,
            ):
                a = np.array(xs)
                print(
                    f"from requests, {label}: p50 {np.median(a):.3f} s, "
                    f"p99 {np.quantile(a, 0.99):.3f} s, max {a.max():.3f} s over {len(a)}"
                )
    wrong = 0
    for name in names[args.aborts : args.aborts + args.races]:
        api = NewTemplateBeforePatch(
            KubeRolloutApi(actuator_clients[0]), admin_a, name, canaries_a[name]
        )
        act = Actuator(
            dataclasses.replace(base, cluster=CLUSTERS[0]),
            api,
            ActuatorMetrics(CollectorRegistry()),
            policy=FAST,
        )
        command = dataclasses.replace(
            command_for(NAMESPACE, name, canaries_a[name]), cluster=CLUSTERS[0]
        )
        result = await act.handle(command)
        after = await asyncio.to_thread(read_rollout, admin_a, NAMESPACE, name)
        if result.outcome is not Outcome.STALE or not untouched_canary(after, api.new_canary):
            wrong += 1
            print(f"WRONG REVISION: {name}: {result}; {after.get('status')}")
    for label, xs in (
        ("decision -> status.abort (actuator)", to_patch),
        ("status.abort -> RolloutAborted (controller)", to_aborted),
        ("decision -> RolloutAborted", total),
    ):
        a = np.array(xs)
        print(
            f"{label}: p50 {np.median(a):.3f} s, p99 {np.quantile(a, 0.99):.3f} s, "
            f"max {a.max():.3f} s over {len(a)}"
        )
    print(f"races (new template between judgement and patch): {args.races}, wrong aborts {wrong}")
    print(evidence_floor(worker.settings.decisions, CANARY_SHARE, worker.settings.event_time))
    arr = np.array(from_first_bad)
    return (
        f"kube-e2e: controller_abort_p50_s={np.median(arr):.2f} "
        f"controller_abort_p99_s={np.quantile(arr, 0.99):.2f} "
        f"wrong_revision_aborts={wrong} cross_cluster_aborts={cross}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.kube", description=__doc__)
    parser.add_argument("--aborts", type=int, default=20, help="commands injected: actuation")
    parser.add_argument("--races", type=int, default=6)
    parser.add_argument(
        "--requests", type=int, default=24, help="aborts judged by the worker (the last line)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and data here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.workdir:
        line = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="canarywatch-bench-kube-") as tmp:
            line = run(args, Path(tmp))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
