"""deploy/analysis: the AnalysisTemplate and ClusterAnalysisTemplate say the same, and what the
gate and Argo need (the real controller runs the namespaced one in
tests/integration/test_gate_controller.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streams.promotion import ABORT, PASS

ANALYSIS = Path(__file__).resolve().parents[1] / "deploy" / "analysis"


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ANALYSIS / name).read_text())
    return doc


def test_both_templates_have_one_spec() -> None:
    namespaced = load("analysistemplate.yaml")
    cluster = load("clusteranalysistemplate.yaml")
    assert namespaced["kind"] == "AnalysisTemplate"
    assert cluster["kind"] == "ClusterAnalysisTemplate"
    assert namespaced["spec"] == cluster["spec"]


def test_the_metric_gates_promotion_on_pass_and_errors_when_canarywatch_is_down() -> None:
    spec = load("analysistemplate.yaml")["spec"]
    (metric,) = spec["metrics"]
    assert metric["successCondition"] == f'result == "{PASS}"'
    assert metric["failureCondition"] == f'result == "{ABORT}"'
    assert metric["consecutiveSuccessLimit"] == 1 and metric["failureLimit"] == 0
    # Argo's validation: a step analysis must end; count >= failureLimit + successes.
    assert metric["count"] >= metric["failureLimit"] + metric["consecutiveSuccessLimit"]
    assert metric["inconclusiveLimit"] >= metric["count"]  # inconclusive holds, never ends early
    assert 1 <= metric["consecutiveErrorLimit"] <= 10
    web = metric["provider"]["web"]
    assert web["jsonPath"] == "{$.verdict}"
    assert (
        "/v1/verdict/{{args.namespace}}/{{args.rollout}}?podHash={{args.canary-hash}}" in web["url"]
    )
    assert {"key": "Authorization", "value": "Bearer {{args.token}}"} in web["headers"]
    token = next(a for a in spec["args"] if a["name"] == "token")
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "canarywatch-analysis-token",
        "key": "token",
    }
