"""`canarywatch`: the one command line for every component."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from pathlib import Path

from agents.codecs import check_codecs
from agents.kubeclient import KubeconfigError
from agents.settings import (
    SettingsError,
    settings_from_env,
    settings_help,
    settings_line,
    unknown_variables,
)

LONG_RUNNING = ("worker", "releases", "actuator", "bridge", "gate", "ui", "notify")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canarywatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "worker",
        help="run the analyzer (settings from CANARYWATCH_* variables)",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_parser("releases", help="run the release agent: pooled release halts and triage")

    for name, text in (
        ("demo", "local broker + worker + simulated fleet; prints aborts and a scorecard"),
        ("simulate", "play a simulated fleet into Kafka"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--bootstrap", help="use this Kafka instead of a local broker")
        p.add_argument("--duration", type=float, help="seconds (default: until Ctrl-C)")
        p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
        p.add_argument("--environments", type=int, default=100)
        p.add_argument("--healthy", type=int, default=20)
        p.add_argument("--bad", type=int, default=3)
        p.add_argument("--platform", type=int, default=2)
        p.add_argument(
            "--lines-per-message", type=int, default=1, help="NDJSON batch size, as shippers do"
        )
        if name == "demo":
            p.add_argument("--no-release", action="store_true", help="skip the release-halt demo")

    actuator = sub.add_parser(
        "actuator",
        help="apply abort commands to Argo Rollouts",
        description="What a command does is the policy: CANARYWATCH_ACTION_POLICY=abort (default)"
        "|pause|dry-run, overridden per Rollout by its canarywatch.io/policy annotation "
        "(docs/operating.md, Policies; deploy/overlays/ grant each policy's RBAC).",
    )
    actuator.add_argument("--kubeconfig", help="default: in-cluster, then ~/.kube/config")
    bridge = sub.add_parser("bridge", help="publish Argo Rollout state to Kafka")
    bridge.add_argument("--namespace", action="append", default=[], help="repeat; default: all")
    bridge.add_argument("--events-topic", help="kubernetes-event-exporter's Kafka topic")
    bridge.add_argument("--kubeconfig", help="default: in-cluster, then ~/.kube/config")

    migrate = sub.add_parser(
        "migrate", help="move Deployments to Argo Rollouts in waves, with no downtime"
    )
    migrate.add_argument("--template", required=True, help="YAML: the Rollout spec's strategy")
    migrate.add_argument("--namespace", action="append", default=[], help="repeat; default: all")
    migrate.add_argument("--selector", default="", help="label selector of the Deployments")
    migrate.add_argument(
        "--scale-down", choices=("progressively", "onsuccess", "explicit"), default="progressively"
    )
    migrate.add_argument("--wave-size", type=int, default=20)
    migrate.add_argument("--concurrency", type=int, default=10, help="services at once")
    migrate.add_argument(
        "--failure-budget", type=float, default=0.1, help="fraction (<1) or count of a wave"
    )
    migrate.add_argument("--health-timeout", type=float, default=600.0, help="seconds")
    migrate.add_argument(
        "--canary", action="append", default=[], help="first wave: NAMESPACE or NAMESPACE/NAME"
    )
    migrate.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    migrate.add_argument("--output", choices=("table", "json"), default="table")
    migrate.add_argument("--report", help="write the final report (JSON) here")
    migrate.add_argument("--metrics-port", type=int, default=0, help="0: no metrics endpoint")
    migrate.add_argument("--kubeconfig", help="default: in-cluster, then ~/.kube/config")

    gate = sub.add_parser("gate", help="serve canary verdicts to Argo's web metric provider")
    gate.add_argument("--kubeconfig", help="default: in-cluster, then ~/.kube/config")
    gate.add_argument("--port", type=int, help="default: CANARYWATCH_GATE_PORT (9110)")

    status = sub.add_parser("status", help="one row per canary in progress, most urgent first")
    status.add_argument("-n", "--namespace", action="append", default=[], help="repeat")
    status.add_argument("--release", action="append", default=[], help="substring; repeat")
    status.add_argument(
        "--verdict",
        action="append",
        default=[],
        choices=["abort", "platform", "stale", "inconclusive", "pass"],
    )
    status.add_argument("-o", "--output", choices=["table", "json"], default="table")
    status.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--every", type=float, default=2.0, help="seconds between refreshes")

    explain = sub.add_parser("explain", help="why a canary's verdict is what it is")
    explain.add_argument("env", metavar="NAMESPACE/ROLLOUT")
    explain.add_argument("--plot", type=Path, help="draw its statistic and ratios to this PNG")

    ui = sub.add_parser("ui", help="the fleet board in the browser")
    ui.add_argument("--port", type=int, default=9120)
    ui.add_argument("--host", default="127.0.0.1")

    notify = sub.add_parser("notify", help="post aborts and platform verdicts to a webhook")
    notify.add_argument("--url", required=True, help="webhook URL")
    notify.add_argument("--format", choices=["slack", "json"], default="slack")
    notify.add_argument("--explain-base-url", default="", help="links to explain pages")

    replay = sub.add_parser("replay", help="recorded logs and rollout states through the engine")
    replay.add_argument("files", nargs="*", type=Path, help="NDJSON files (requests, rollouts)")
    replay.add_argument("--from-topic", action="store_true", help="read the topics instead")
    replay.add_argument("--since", type=float, help="epoch seconds to start the topics from")
    replay.add_argument("--plot", type=Path, help="draw the decisions over time to this PNG")
    replay.add_argument("-o", "--output", choices=["text", "json"], default="text")

    broker = sub.add_parser("broker", help="a local single-node Kafka for development")
    broker.add_argument("args", nargs=argparse.REMAINDER, help="start|stop|fetch and options")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _main(args)
    except SettingsError as error:
        print(f"canarywatch: {error}", file=sys.stderr)
        return 2
    except KubeconfigError as error:
        print(f"canarywatch {args.command}: {error}", file=sys.stderr)
        return 2
    if argv is None and args.command == "status" and not args.watch:
        # A one-shot status from the command line is done once its output is flushed: freeing
        # 20,000 rows' objects one by one at exit cost ~10% of its CPU time.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(args: argparse.Namespace) -> int:
    for name in unknown_variables():
        print(f"canarywatch: warning: {name} is not a setting (misspelled?)", file=sys.stderr)
    if args.command in LONG_RUNNING:
        # The effective settings, once, secrets masked: what this process runs with.
        print(f"canarywatch {args.command}: {settings_line(settings_from_env())}", file=sys.stderr)
    if args.command in ("worker", "actuator", "bridge", "releases"):
        check_codecs(settings_from_env().disabled_codecs)
    if args.command == "worker":
        from agents.worker import run_worker

        run_worker(settings_from_env())
        return 0
    if args.command == "releases":
        from agents.releases import run_releases

        return run_releases(settings_from_env())
    if args.command == "actuator":
        from agents.actuator import run_actuator

        return run_actuator(settings_from_env(), kubeconfig=args.kubeconfig)
    if args.command == "bridge":
        from agents.bridge import BridgeOptions, run_bridge

        options = BridgeOptions(tuple(args.namespace), events_topic=args.events_topic)
        return run_bridge(settings_from_env(), options, kubeconfig=args.kubeconfig)
    if args.command == "migrate":
        from agents.migrate import run_migrate

        return run_migrate(
            template=args.template,
            namespaces=args.namespace,
            selector=args.selector,
            scale_down=args.scale_down,
            wave_size=args.wave_size,
            concurrency=args.concurrency,
            failure_budget=args.failure_budget,
            health_timeout_s=args.health_timeout,
            canary=args.canary,
            dry_run=args.dry_run,
            output=args.output,
            report_path=args.report,
            metrics_port=args.metrics_port,
            kubeconfig=args.kubeconfig,
        )

    if args.command == "gate":
        from agents.gate import run_gate

        settings = settings_from_env()
        if args.port is not None:
            settings = settings.with_overrides(gate_port=args.port)
        return run_gate(settings, kubeconfig=args.kubeconfig)
    if args.command in ("status", "explain"):
        from agents.status import StatusOptions, run_explain, run_status

        try:
            if args.command == "explain":
                from rich.console import Console

                return asyncio.run(run_explain(settings_from_env(), args.env, Console(), args.plot))
            settings = settings_from_env()
            status_options = StatusOptions(
                tuple(args.namespace),
                tuple(args.release),
                tuple(args.verdict),
                output=args.output,
                watch=args.watch,
                every_s=args.every,
                stale_after_s=settings.gate_max_age_s,
            )
            return asyncio.run(run_status(settings, status_options))
        except KeyboardInterrupt:
            return 0
    if args.command == "ui":
        from agents.ui import run_ui

        return run_ui(settings_from_env(), args.host, args.port)
    if args.command == "notify":
        from agents.notify import NotifyOptions, run_notify

        options_n = NotifyOptions(args.url, args.format, args.explain_base_url)
        return run_notify(settings_from_env(), options_n)
    if args.command == "replay":
        from agents.replay import replay_main

        return replay_main(
            settings_from_env(), args.files, args.from_topic, args.since, args.plot, args.output
        )
    if args.command == "broker":
        from agents.localkafka import main as broker_main

        return broker_main(args.args)
    from streams.simulation import SimulationSettings  # demo and simulate only: not at start

    simulation = SimulationSettings(
        environments=args.environments, healthy=args.healthy, bad=args.bad, platform=args.platform
    )
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    if args.command == "demo":
        from agents.demo import demo_main

        return asyncio.run(
            demo_main(
                args.bootstrap,
                args.duration,
                seed,
                args.lines_per_message,
                simulation,
                release=not args.no_release,
            )
        )
    if args.command == "simulate":
        from agents.simulator import simulate

        settings = settings_from_env()
        bootstrap = args.bootstrap or settings.bootstrap
        run = asyncio.run(
            simulate(
                bootstrap,
                settings.topics,
                simulation,
                seed,
                args.duration if args.duration is not None else float("inf"),
                args.lines_per_message,
                auth=settings.kafka,
            )
        )
        print(f"simulate: {run.lines_sent} request lines, seed {seed}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
