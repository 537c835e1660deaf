"""`python -m bench.show_gate`: canarywatch's promotion gate as Argo shows it, for the README.

The setup of tests/integration/test_gate_controller.py, once, outside pytest: a LocalKafka, a
LocalKubeAPI (Argo CRDs, deploy/base RBAC, deploy/analysis access and token Secret), the real
Argo Rollouts controller with the stand-in kubelet, a `canarywatch worker` process, and the
bridge and gate in process. A Rollout `web` (`setWeight: 20`, then the AnalysisTemplate of
deploy/analysis at a 2 s interval) goes from v1 to v2 with a healthy busy canary; once the
controller runs the analysis step and the gate has answered, and again once the Rollout is
promoted, it prints `kubectl argo rollouts get rollout web` (the plugin of
scripts/argo/build-plugin.sh), the AnalysisRun's measurements (`kubectl get analysisrun`) and
the gate's JSON for that revision.

    .venv/bin/python -m bench.show_gate [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from agents.kafka_admin import ensure_topics, ensure_verdict_topic
from agents.localkafka import LocalKafka, free_ports
from agents.processes import WorkerProcess, free_port, poll_until
from agents.settings import Settings, Topics
from tests.integration.test_actuator import ensure_namespace
from tests.integration.test_gate import analysis_access
from tests.integration.test_gate_controller import (
    NAMESPACE,
    analysis_runs,
    canary_at_analysis,
    components,
    gate_verdict,
    measurements,
    promoted,
    traffic,
    wait_for,
)
from tests.support.argo import ReplicaSetKubelet, RolloutsController, install_argo_crds
from tests.support.localkube import REPO_ROOT, LocalKubeAPI
from tests.support.rbac import apply_rbac

NAME = "web"
PLUGIN_SCRIPT = REPO_ROOT / "scripts" / "argo" / "build-plugin.sh"


def plugin() -> Path:
    """kubectl-argo-rollouts, built by scripts/argo/build-plugin.sh when missing."""
    out = subprocess.run(
        ["bash", str(PLUGIN_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True
    ).stdout
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Path(found["KUBECTL_ARGO_ROLLOUTS"])


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    return proc.stdout + proc.stderr


def show(title: str, argv: list[str], kubeconfig: Path) -> None:
    head = "kubectl argo rollouts" if Path(argv[0]).name == "kubectl-argo-rollouts" else argv[0]
    shown = " ".join([head, *(shlex.quote(a) for a in argv[1:])])
    print(f"\n## {title}\n$ {shown}", flush=True)
    print(run([argv[0], f"--kubeconfig={kubeconfig}", *argv[1:]]).rstrip(), flush=True)


def measurements_argv(run_name: str) -> list[str]:
    path = (
        "{range .status.metricResults[*]}{.name}: {.phase}, {.count} measurements"
        ' ({.successful} successful, {.inconclusive} inconclusive){"\\n"}'
        '{range .measurements[*]}  {.finishedAt}  {.phase}  value={.value}{"\\n"}{end}{end}'
    )
    return ["kubectl", "-n", NAMESPACE, "get", "analysisrun", run_name, "-o", f"jsonpath={path}"]


async def scenario(kube: LocalKubeAPI, settings: Settings, kubeconfig: Path, argo: Path) -> None:
    get = [str(argo), "get", "rollout", NAME, "-n", NAMESPACE, "--no-color"]
    token = kube.token("analysis")
    with kube.client("admin") as admin:
        async with components(kube, settings) as gate:
            assert gate is not None
            _, canary, stable = await canary_at_analysis(
                admin, f"http://127.0.0.1:{gate.port}", name=NAME
            )
            async with traffic(settings, canary, stable, per_s=1500, canary_errors=0.001):

                def measured() -> list[dict[str, Any]]:
                    return [m for r in analysis_runs(admin, canary) for m in measurements(r)]

                await poll_until(measured, 60, "a first measurement")
                show("at the analysis step", get, kubeconfig)
                await wait_for(admin, NAME, "promoted", lambda o: promoted(o, canary))
                body = await gate_verdict(gate, NAME, canary, token)
        show("promoted", get, kubeconfig)
        run_name = analysis_runs(admin, canary)[0]["metadata"]["name"]
        show("the AnalysisRun's measurements", measurements_argv(run_name), kubeconfig)
        print(f"\n## the gate's answer for {NAME} at {canary}")
        print(json.dumps(body, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: temporary)")
    args = parser.parse_args(argv)
    argo = plugin()
    work = args.keep or Path(tempfile.mkdtemp(prefix="canarywatch-show-gate-"))
    work.mkdir(parents=True, exist_ok=True)
    port, controller_port = free_ports(2)
    kafka = LocalKafka(work / "kafka", port, controller_port)
    kafka.start(timeout=180)
    try:
        with LocalKubeAPI(workdir=work / "kube") as kube:
            install_argo_crds(kube)
            apply_rbac(kube)
            ensure_namespace(kube, NAMESPACE)
            for obj in analysis_access(NAMESPACE):
                kube.apply(obj)
            kube.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "canarywatch-analysis-token", "namespace": NAMESPACE},
                    "stringData": {"token": kube.token("analysis")},
                }
            )
            kubeconfig = kube.write_kubeconfig(work / "kubeconfig")
            run_id = uuid.uuid4().hex[:8]
            settings = Settings(
                bootstrap=kafka.bootstrap,
                app_id=f"showgate-{run_id}",
                topics=Topics(f"showgate-{run_id}"),
                partitions=1,
                replication_factor=1,
                metrics_port=free_port(),
                data_dir=work / "worker",
                verdict_refresh_s=1.0,
                gate_max_age_s=15.0,
                gate_port=0,
            )
            asyncio.run(ensure_topics(settings.bootstrap, settings.topic_partitions()))
            asyncio.run(ensure_verdict_topic(settings))
            worker = WorkerProcess(settings, work / "worker.log")
            with kube.client("admin") as admin, ReplicaSetKubelet(admin, NAMESPACE):
                controller = RolloutsController(kube, NAMESPACE, work / "argo")
                try:
                    controller.start()
                    worker.start()
                    asyncio.run(worker.wait_ready())
                    asyncio.run(scenario(kube, settings, kubeconfig, argo))
                finally:
                    worker.stop()
                    controller.stop()
    finally:
        kafka.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
