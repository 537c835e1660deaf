"""What `canarywatch migrate` shows: the plan (table, JSON) and the final report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from streams.migration import (
    ServicePlan,
)


def plan_table(plans: Sequence[ServicePlan], order: Sequence[Sequence[ServicePlan]]) -> Table:
    wave_of = {p.key: i for i, wave in enumerate(order, start=1) for p in wave}
    table = Table(title="canarywatch migrate: plan (dry run, nothing changed)")
    for column in (
        "wave",
        "namespace",
        "deployment",
        "replicas",
        "floor",
        "hpa",
        "pdb",
        "scale-down",
        "status",
    ):
        table.add_column(column)
    for p in sorted(plans, key=lambda p: (wave_of.get(p.key, 10**9), p.key)):
        if p.blocked:
            status = "[red]blocked[/]: " + "; ".join(p.blockers)
        elif p.done or p.in_progress:
            status = p.phase
        else:
            status = "ready"
        table.add_row(
            str(wave_of.get(p.key, "-")),
            p.namespace,
            p.name,
            str(p.replicas),
            str(p.floor),
            p.hpa or "-",
            ",".join(p.pdbs) or "-",
            str(p.scale_down),
            status,
        )
    return table


def plan_json(
    plans: Sequence[ServicePlan], order: Sequence[Sequence[ServicePlan]]
) -> dict[str, Any]:
    wave_of = {p.key: i for i, wave in enumerate(order, start=1) for p in wave}
    return {
        "services": len(plans),
        "ready": sum(1 for p in plans if not p.blocked and not p.done),
        "blocked": sum(1 for p in plans if p.blocked),
        "waves": [[p.key for p in wave] for wave in order],
        "plans": [{**p.to_json(), "wave": wave_of.get(p.key)} for p in plans],
    }


def report_table(final: Mapping[str, Any]) -> Table:
    table = Table(title="canarywatch migrate: report")
    table.add_column("outcome")
    table.add_column("services")
    table.add_column("details")
    rolled = final["rolled_back"]
    blocked = final["blocked"]
    table.add_row("migrated", str(len(final["migrated"])), "")
    table.add_row(
        "rolled back",
        str(len(rolled)),
        "; ".join(f"{k}: {v}" for k, v in list(rolled.items())[:10]),
    )
    table.add_row(
        "blocked",
        str(len(blocked)),
        "; ".join(f"{k}: {', '.join(v)}" for k, v in list(blocked.items())[:10]),
    )
    table.add_row("not done", str(len(final["not_done"])), final["stopped"])
    return table
