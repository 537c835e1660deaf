"""`canarywatch migrate`: Deployments become Argo Rollouts in waves, with no downtime.

The plan and every per-service decision are pure (`streams.migration`); this module reads the
cluster (`agents.migrate_kube`: the API calls and the change feed that wakes a service waiting
for the controller), applies the decided actions and runs the waves; `agents.migrate_report`
shows the plan and the report.

- `Migrator`: per service, read the objects, ask `next_action`, apply it, until done; a wave's
  services run concurrently in a thread pool (`concurrency`), and a wave in which more than the
  failure budget of its services were rolled back stops the migration.

Every write carries the `metadata.resourceVersion` its decision was made on (409 when the
object changed: read and decide again), and progress lives in annotations on the objects, so a
migrator killed at any point and started again finishes what it had started, creates no second
Rollout and scales no Deployment down twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.migrate_kube import ChangeFeed, KubeError, KubeMigrationApi, migrate_api_client
from agents.migrate_report import plan_json, plan_table, report_table
from streams.migration import (
    ANN_PHASE,
    ANN_REASON,
    ANN_REPLICAS,
    Act,
    Action,
    Phase,
    ScaleDown,
    ServicePlan,
    annotations_of,
    build_rollout,
    key_of,
    namespace_of,
    next_action,
    plan_service,
    validate_template,
    wave_failed,
    waves,
)

log = logging.getLogger("canarywatch.migrate")

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
MERGE_PATCH = "application/merge-patch+json"
Obj = dict[str, Any]


# --- metrics, options, results ---------------------------------------------------------------


class MigrateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.services = Counter(
            "canarywatch_migrate_services_total",
            "services finished, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.actions = Counter(
            "canarywatch_migrate_actions_total",
            "actions applied, by kind",
            ["action"],
            registry=registry,
        )
        self.conflicts = Counter(
            "canarywatch_migrate_conflicts_total",
            "writes refused as stale (409)",
            registry=registry,
        )
        self.wave = Gauge(
            "canarywatch_migrate_wave", "the wave in progress (1-based)", registry=registry
        )
        self.in_flight = Gauge(
            "canarywatch_migrate_in_flight", "services being migrated now", registry=registry
        )
        self.seconds = Histogram(
            "canarywatch_migrate_service_seconds",
            "one service's migration, start to end",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )


@dataclass(frozen=True)
class MigrateOptions:
    template_spec: Mapping[str, Any]
    namespaces: tuple[str, ...] = ()
    selector: str = ""
    scale_down: ScaleDown = ScaleDown.PROGRESSIVELY
    wave_size: int = 20
    concurrency: int = 10
    failure_budget: float = 0.1
    health_timeout_s: float = 600.0
    canary: tuple[str, ...] = ()
    poll_s: float = 2.0  # re-read a waiting service at least this often, changes or not


@dataclass
class ServiceResult:
    key: str
    outcome: str  # migrated | rolled-back | blocked | error
    reason: str = ""
    seconds: float = 0.0


@dataclass
class WaveSummary:
    index: int
    size: int
    migrated: int = 0
    rolled_back: int = 0
    errors: int = 0
    seconds: float = 0.0
    stopped: bool = False


@dataclass
class Report:
    plans: list[ServicePlan]
    waves: list[WaveSummary] = field(default_factory=list)
    results: dict[str, ServiceResult] = field(default_factory=dict)
    stopped: str = ""
    seconds: float = 0.0

    def final(self, deployments: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The report, from what the cluster holds at the end (so a resumed run reports the
        outcomes of the runs before it too)."""
        blocked = {p.key: list(p.blockers) for p in self.plans if p.blocked}
        migrated, rolled_back, pending = [], {}, []
        for dep in deployments:
            key, ann = key_of(dep), annotations_of(dep)
            phase = ann.get(ANN_PHASE, "")
            if phase == Phase.MIGRATED:
                migrated.append(key)
            elif phase == Phase.ROLLED_BACK:
                rolled_back[key] = ann.get(ANN_REASON, "")
            elif key not in blocked:
                pending.append(key)
        return {
            "services": len(deployments),
            "migrated": sorted(migrated),
            "rolled_back": dict(sorted(rolled_back.items())),
            "blocked": dict(sorted(blocked.items())),
            "not_done": sorted(pending),
            "stopped": self.stopped,
            "waves": [vars(w) for w in self.waves],
            "seconds": round(self.seconds, 3),
        }


# --- the migrator ----------------------------------------------------------------------------


class Migrator:
    def __init__(
        self,
        api: KubeMigrationApi,
        options: MigrateOptions,
        metrics: MigrateMetrics,
        *,
        console: Console | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.options = options
        self.metrics = metrics
        self.console = console or Console(stderr=True)
        self.clock = clock
        self._stopping = threading.Event()

    # planning
    def _namespaces(self) -> list[str]:
        return list(self.options.namespaces) or [""]

    def plan(self) -> list[ServicePlan]:
        """Every selected Deployment's plan; the namespaces are read concurrently."""
        now = self.clock()
        with ThreadPoolExecutor(max(1, min(8, self.options.concurrency)), "plan") as pool:
            per_namespace = list(
                pool.map(lambda ns: self._plan_namespace(ns, now), self._namespaces())
            )
        return sorted((p for plans in per_namespace for p in plans), key=lambda p: p.key)

    def _plan_namespace(self, namespace: str, now: float) -> list[ServicePlan]:
        deployments = self.api.deployments(namespace, self.options.selector)
        if not deployments:
            return []
        by_ns: dict[str, dict[str, list[Obj]]] = {}
        for kind, lister in (
            ("rollouts", self.api.rollouts),
            ("hpas", self.api.hpas),
            ("pdbs", self.api.pdbs),
            ("services", self.api.services),
        ):
            for obj in lister(namespace):
                by_ns.setdefault(namespace_of(obj), {}).setdefault(kind, []).append(obj)
        plans = []
        for dep in deployments:
            others = by_ns.get(namespace_of(dep), {})
            plans.append(
                plan_service(
                    dep,
                    rollouts=others.get("rollouts", []),
                    hpas=others.get("hpas", []),
                    pdbs=others.get("pdbs", []),
                    services=others.get("services", []),
                    template_spec=self.options.template_spec,
                    scale_down=self.options.scale_down,
                    now=now,
                )
            )
        return plans

    def deployments(self) -> list[Obj]:
        found: list[Obj] = []
        for namespace in self._namespaces():
            found.extend(self.api.deployments(namespace, self.options.selector))
        return found

    def stop(self) -> None:
        self._stopping.set()

    # one service
    def migrate_service(self, plan: ServicePlan, feed: ChangeFeed) -> ServiceResult:
        """Decide from the feed's objects, apply, until done. A conflict (409) means a decision
        was made on a stale object: read the objects afresh into the feed and decide again."""
        started = time.monotonic()
        ns, name = plan.namespace, plan.name
        self.metrics.in_flight.inc()
        try:
            while not self._stopping.is_set():
                seen = feed.version(plan.key)
                try:
                    deployment = feed.get("deployment", ns, name)
                    rollout = feed.get("rollout", ns, name)
                    hpa = feed.get("hpa", ns, plan.hpa) if plan.hpa else None
                    if deployment is None:  # not (yet) in the feed: ask the API server
                        deployment = self.api.deployment(ns, name)
                        feed.put("deployment", deployment)
                    action = next_action(
                        deployment,
                        rollout,
                        hpa,
                        scale_down=plan.scale_down,
                        now=self.clock(),
                        health_timeout_s=self.options.health_timeout_s,
                    )
                    if action.act is Act.DONE:
                        outcome = "migrated" if action.phase == Phase.MIGRATED else "rolled-back"
                        return ServiceResult(
                            plan.key, outcome, action.reason, time.monotonic() - started
                        )
                    if action.act is Act.BLOCKED:
                        return ServiceResult(
                            plan.key, "blocked", action.reason, time.monotonic() - started
                        )
                    if action.act is Act.WAIT:
                        feed.wait(plan.key, seen, self.options.poll_s)
                        continue
                    assert deployment is not None
                    self._apply(plan, action, deployment, rollout, hpa, feed)
                    self.metrics.actions.labels(str(action.act)).inc()
                except KubeError as exc:
                    if exc.status == 409:
                        self.metrics.conflicts.inc()
                    else:
                        log.warning("%s: %s; retrying", plan.key, exc)
                        feed.wait(plan.key, seen, self.options.poll_s)
                    self._refresh(plan, feed)
            return ServiceResult(plan.key, "error", "stopped", time.monotonic() - started)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.seconds.observe(time.monotonic() - started)

    def _refresh(self, plan: ServicePlan, feed: ChangeFeed) -> None:
        """Read the service's objects from the API server into the feed."""
        ns, name = plan.namespace, plan.name
        with contextlib.suppress(KubeError):
            feed.put("deployment", self.api.deployment(ns, name))
            rollout = self.api.rollout(ns, name)
            if rollout is None:
                held = feed.get("rollout", ns, name)
                feed.put("rollout", held, deleted=True)
            else:
                feed.put("rollout", rollout)
            if plan.hpa:
                feed.put("hpa", self.api.hpa(ns, plan.hpa))

    def _apply(
        self,
        plan: ServicePlan,
        action: Action,
        deployment: Obj,
        rollout: Obj | None,
        hpa: Obj | None,
        feed: ChangeFeed,
    ) -> None:
        """Apply `action`; what the API server answers goes into the feed."""
        ns, name = plan.namespace, plan.name
        rv = str((deployment.get("metadata") or {}).get("resourceVersion", ""))
        if action.act is Act.START:
            written = self.api.patch_deployment(
                ns,
                name,
                {
                    "metadata": {
                        "resourceVersion": rv,
                        "annotations": {
                            ANN_REPLICAS: str(action.replicas),
                            ANN_PHASE: str(Phase.MIGRATING),
                        },
                    }
                },
            )
            feed.put("deployment", written)
        elif action.act is Act.CREATE_ROLLOUT:
            # replicas from the annotation written by START; the health gate starts now
            body = build_rollout(
                deployment, self.options.template_spec, plan.scale_down, created_at=self.clock()
            )
            created = self.api.create_rollout(ns, body)
            if created is None:  # it exists (ours from before a crash, or not ours): read it
                raise KubeError(409, "the Rollout exists")
            feed.put("rollout", created)
        elif action.act is Act.MOVE_HPA:
            assert hpa is not None
            api_version = "argoproj.io/v1alpha1" if action.target_kind == "Rollout" else "apps/v1"
            hpa_rv = str((hpa.get("metadata") or {}).get("resourceVersion", ""))
            moved = self.api.patch_hpa(
                ns,
                plan.hpa,
                {
                    "metadata": {"resourceVersion": hpa_rv},
                    "spec": {
                        "scaleTargetRef": {
                            "apiVersion": api_version,
                            "kind": action.target_kind,
                            "name": name,
                        }
                    },
                },
            )
            feed.put("hpa", moved)
        elif action.act is Act.SCALE_DEPLOYMENT:
            # The scale and the phase in one patch: a crash leaves both or neither.
            written = self.api.patch_deployment(
                ns,
                name,
                {
                    "metadata": {"resourceVersion": rv, "annotations": {ANN_PHASE: action.phase}},
                    "spec": {"replicas": action.replicas},
                },
            )
            feed.put("deployment", written)
        elif action.act is Act.SET_PHASE:
            ann = {ANN_PHASE: action.phase}
            if action.phase == Phase.ROLLING_BACK:
                ann[ANN_REASON] = action.reason
                log.info("%s: rolling back: %s", plan.key, action.reason)
            written = self.api.patch_deployment(
                ns, name, {"metadata": {"resourceVersion": rv, "annotations": ann}}
            )
            feed.put("deployment", written)
        elif action.act is Act.NEVER_SCALE_DOWN:
            assert rollout is not None
            ro_rv = str((rollout.get("metadata") or {}).get("resourceVersion", ""))
            patched = self.api.patch_rollout(
                ns,
                name,
                {
                    "metadata": {"resourceVersion": ro_rv},
                    "spec": {"workloadRef": {"scaleDown": "never"}},
                },
            )
            feed.put("rollout", patched)
        elif action.act is Act.DELETE_ROLLOUT:
            assert rollout is not None
            self.api.delete_rollout(ns, name, str((rollout.get("metadata") or {}).get("uid", "")))
            feed.put("rollout", rollout, deleted=True)

    # the waves
    def run(self, plans: list[ServicePlan], feed: ChangeFeed) -> Report:
        began = time.monotonic()
        report = Report(plans)
        order = waves(plans, self.options.wave_size, self.options.canary)
        total = sum(len(w) for w in order)
        columns = (
            TextColumn("[bold]migrate[/] wave {task.fields[wave]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("migrated {task.fields[ok]} rolled back {task.fields[rb]}"),
            TimeElapsedColumn(),
        )
        ok = rb = 0
        with (
            Progress(*columns, console=self.console, transient=False) as progress,
            ThreadPoolExecutor(max(1, self.options.concurrency), "migrate") as pool,
        ):
            task = progress.add_task("migrate", total=total, wave=f"0/{len(order)}", ok=0, rb=0)
            for index, wave in enumerate(order, start=1):
                self.metrics.wave.set(index)
                progress.update(task, wave=f"{index}/{len(order)}")
                summary = WaveSummary(index, len(wave))
                wave_began = time.monotonic()
                futures = [pool.submit(self.migrate_service, plan, feed) for plan in wave]
                for future in futures:
                    result = future.result()
                    report.results[result.key] = result
                    self.metrics.services.labels(result.outcome).inc()
                    if result.outcome == "migrated":
                        summary.migrated += 1
                        ok += 1
                    elif result.outcome == "rolled-back":
                        summary.rolled_back += 1
                        rb += 1
                    else:
                        summary.errors += 1
                    progress.update(task, advance=1, ok=ok, rb=rb)
                summary.seconds = round(time.monotonic() - wave_began, 3)
                failed = summary.rolled_back + summary.errors
                summary.stopped = wave_failed(failed, len(wave), self.options.failure_budget)
                report.waves.append(summary)
                progress.console.print(
                    f"wave {index}/{len(order)}: {summary.size} services, {summary.migrated} "
                    f"migrated, {summary.rolled_back} rolled back, {summary.errors} errors, "
                    f"{summary.seconds:.1f}s"
                )
                if self._stopping.is_set():
                    report.stopped = f"interrupted in wave {index}: run again to resume"
                    progress.console.print(f"[bold red]stopped[/]: {report.stopped}")
                    break
                if summary.stopped:
                    report.stopped = (
                        f"wave {index}: {failed} of {len(wave)} services failed their health gate "
                        f"(budget {self.options.failure_budget:g})"
                    )
                    progress.console.print(f"[bold red]stopped[/]: {report.stopped}")
                    break
        report.seconds = time.monotonic() - began
        return report


def load_template(path: str) -> dict[str, Any]:
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a mapping")
    return validate_template(doc)


def run_migrate(
    *,
    template: str,
    namespaces: Sequence[str],
    selector: str,
    scale_down: str,
    wave_size: int,
    concurrency: int,
    failure_budget: float,
    health_timeout_s: float,
    canary: Sequence[str],
    dry_run: bool,
    output: str,
    report_path: str | None,
    metrics_port: int,
    kubeconfig: str | None,
) -> int:
    """The `canarywatch migrate` command. Exit 0 when every selected service that was not
    blocked ended migrated or rolled back and no wave stopped the run, 1 otherwise, 2 on a bad
    template."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        template_spec = load_template(template)
    except (OSError, ValueError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 2
    options = MigrateOptions(
        template_spec=template_spec,
        namespaces=tuple(namespaces),
        selector=selector,
        scale_down=ScaleDown(scale_down),
        wave_size=wave_size,
        concurrency=concurrency,
        failure_budget=failure_budget,
        health_timeout_s=health_timeout_s,
        canary=tuple(canary),
    )
    registry = CollectorRegistry()
    metrics = MigrateMetrics(registry)
    if metrics_port:
        start_http_server(metrics_port, registry=registry)
    api_client = migrate_api_client(kubeconfig, concurrency + 8)
    console = Console(stderr=True)
    try:
        migrator = Migrator(KubeMigrationApi(api_client), options, metrics, console=console)
        plans = migrator.plan()
        order = waves(plans, wave_size, options.canary)
        if dry_run:
            if output == "json":
                print(json.dumps(plan_json(plans, order), indent=2))
            else:
                Console(width=200).print(plan_table(plans, order))
            return 0
        feed = ChangeFeed(api_client, selector).start()
        # Ctrl-C / SIGTERM: every service stops at its next step; what was done stays recorded
        # in the cluster, and the next run resumes from there.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: migrator.stop())
        try:
            report = migrator.run(plans, feed)
        finally:
            feed.stop()
        final = report.final(migrator.deployments())
        console.print(report_table(final))
        if report_path:
            Path(report_path).write_text(json.dumps(final, indent=2))
        print(
            f"migrate: services={final['services']} migrated={len(final['migrated'])} "
            f"rolled_back={len(final['rolled_back'])} blocked={len(final['blocked'])} "
            f"not_done={len(final['not_done'])} seconds={final['seconds']}"
        )
        return 1 if final["stopped"] or final["not_done"] else 0
    finally:
        api_client.close()  # type: ignore[no-untyped-call]
