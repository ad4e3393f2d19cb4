"""The `prepost` command, through typer's test runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from prepost.cli import app

runner = CliRunner()


def test_demo_backs_up_three_instances_and_exits_zero() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "run status: SUCCEEDED" in result.output
    assert result.output.count("app-consistent") == 3


def test_demo_json_shape() -> None:
    result = runner.invoke(app, ["demo", "--instances", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "SUCCEEDED"
    assert len(report["instances"]) == 2
    for instance in report["instances"]:
        assert instance["status"] == "SUCCEEDED"
        assert list(instance["phases"]) == ["PRE_SCRIPT", "STOP", "BACKUP", "START", "POST_SCRIPT"]
        assert instance["phases"]["BACKUP"]["recovery_point_arn"].startswith("arn:aws:ec2:")


def test_the_installed_command_runs_from_any_directory(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "prepost"
    result = subprocess.run(
        [str(command), "demo", "--instances", "1", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["status"] == "SUCCEEDED"
