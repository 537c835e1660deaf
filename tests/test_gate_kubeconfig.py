"""`canarywatch gate` with a kubeconfig it cannot load: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.cli import main


def _gate(kubeconfig: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["gate", "--kubeconfig", kubeconfig])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("canarywatch gate: ")]


def test_missing_kubeconfig_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _gate("/nonexistent", capsys)
    assert code == 2
    assert lines[-1] == "canarywatch gate: cannot load kubeconfig /nonexistent: no such file"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not: [yaml", "expected ',' or ']'"),  # not YAML: the parser's message, on one line
        ("apiVersion: v1\nkind: Config\n", "Expected key current-context"),
    ],
)
def test_invalid_kubeconfig_is_one_line(
    text: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    code, lines = _gate(str(path), capsys)
    assert code == 2
    assert lines[-1].startswith(f"canarywatch gate: cannot load kubeconfig {path}: ")
    assert reason in lines[-1]
