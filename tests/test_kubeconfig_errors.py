"""gate, actuator, bridge with a kubeconfig they cannot load: one line on stderr, exit 2, no
traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.cli import main

COMMANDS = ["gate", "actuator", "bridge"]


def _run(
    command: str, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    code = main([command, "--kubeconfig", kubeconfig])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    prefix = f"canarywatch {command}: cannot load kubeconfig"
    return code, [line for line in err.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_kubeconfig_is_one_line(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _run(command, "/nonexistent", capsys)
    assert code == 2
    assert lines == [f"canarywatch {command}: cannot load kubeconfig /nonexistent: no such file"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not: [yaml", "expected ',' or ']'"),  # not YAML: the parser's message, on one line
        ("apiVersion: v1\nkind: Config\n", "Expected key current-context"),
    ],
)
def test_invalid_kubeconfig_is_one_line(
    command: str, text: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    code, lines = _run(command, str(path), capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"canarywatch {command}: cannot load kubeconfig {path}: ")
    assert reason in lines[0]
