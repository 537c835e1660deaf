"""`make bench-migrate`: Deployments to Argo Rollouts in waves, on a real API server and the real
Argo Rollouts controller (issue 15).

One run: a fleet of Deployments (some with an HPA, some with a PDB, a few whose pods never get
ready) on an API server of its own; `canarywatch migrate` as the migrator ServiceAccount, killed
with SIGKILL mid-wave and started again. Every change to a Deployment, ReplicaSet or Rollout is
replayed in etcd's order to count the moments a service had fewer available replicas than its
floor (desired minus its PDB's allowance). The stand-in kubelet's readiness delay is zero unless
--ready-delay is given. The last line is

    migrate: services=N migrated=M rolled_back=R unavailable_moments=U resumed_duplicates=D
      services_per_min=S   (one line)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.support.migration import MigrationCluster, fleet, run_scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.migrate", description=__doc__)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--per-namespace", type=int, default=10)
    parser.add_argument("--never-ready", type=int, default=6)
    parser.add_argument("--wave-size", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--kill-at", type=int, default=90, help="kill -9 after this many started")
    parser.add_argument("--no-kill", action="store_true")
    parser.add_argument("--scale-down", default="progressively")
    parser.add_argument("--ready-delay", type=float, default=0.0, help="kubelet readiness delay, s")
    args = parser.parse_args(argv)
    services = fleet(args.namespaces, args.per_namespace, args.never_ready)
    with tempfile.TemporaryDirectory(prefix="canarywatch-bench-migrate-") as tmp:
        workdir = Path(tmp)
        with MigrationCluster(workdir, ready_delay_s=args.ready_delay) as cluster:
            result = run_scenario(
                cluster,
                services,
                workdir,
                kill_at=None if args.no_kill else args.kill_at,
                wave_size=args.wave_size,
                concurrency=args.concurrency,
                failure_budget=0.2,
                health_timeout=60,
                scale_down=args.scale_down,
            )
            print(result.log.read_text(errors="replace")[-3000:])
        failing = sorted(s.key for s in services if s.never_ready)
        rolled = result.outcome("rolled-back")
        print(
            f"exit codes {result.exit_codes}; killed with {result.killed_at_started} started, "
            f"{result.killed_in_progress} mid-migration; {result.seconds:.1f} s"
        )
        print(f"made to fail: {len(failing)}; rolled back exactly those: {rolled == failing}")
        print(
            f"changes replayed {result.findings.changes}; early scale-downs "
            f"{result.findings.early_scale_downs}; recorder errors {result.recorder_errors[:3]}"
        )
        for example in result.findings.examples[:10]:
            print(f"  {example}")
        print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
