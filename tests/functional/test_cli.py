"""The `prepost` command, through typer's test runner and as installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prepost.cli import app
from tests.conftest import seed_input

runner = CliRunner()


def test_demo_backs_up_five_instances_prints_a_timeline_and_exits_zero() -> None:
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "timeline (virtual time)" in result.output
    assert "+02:0" in result.output  # the backup took two simulated hours
    assert "run status: SUCCEEDED" in result.output
    assert result.output.count("app-consistent") == 5


def test_simulate_json_shape() -> None:
    result = runner.invoke(app, ["simulate", "seed-example", "--instances", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "SUCCEEDED"
    assert report["run_id"]
    assert len(report["instances"]) == 2
    for instance in report["instances"]:
        assert instance["instance_id"].startswith("i-")
        assert instance["status"] == "SUCCEEDED"
        assert list(instance["phases"]) == ["PRE_SCRIPT", "STOP", "BACKUP", "START", "POST_SCRIPT"]
        assert all({"status", "reason"} <= set(p) for p in instance["phases"].values())


def test_simulate_exits_one_when_the_run_did_not_succeed() -> None:
    result = runner.invoke(app, ["simulate", "backup-fails"])
    assert result.exit_code == 1
    assert "COMPLETED_WITH_ERRORS" in result.output
    assert "backup job FAILED" in result.output


def test_simulate_a_scheduled_profile_over_virtual_days() -> None:
    result = runner.invoke(app, ["simulate", "nightly-schedule", "--instances", "2"])
    assert result.exit_code == 0, result.output
    assert "profile nightly-db: 30 2 * * * (Europe/Paris), 72 virtual hours" in result.output
    for day in ("27", "28", "29"):  # 02:30 in Paris is 01:30 UTC in November
        assert f"2026-11-{day}T01:30:00Z" in result.output
    assert "3 slots" in result.output


def test_simulate_with_an_input_file(tmp_path: Path) -> None:
    no_stop = tmp_path / "input.json"
    no_stop.write_text(json.dumps(seed_input() | {"StartStopEC2Required": False}))
    result = runner.invoke(app, ["simulate", "--input", str(no_stop), "--json"])
    assert result.exit_code == 0, result.output
    assert "STOP" not in json.loads(result.output)["instances"][0]["phases"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(seed_input() | {"StartStopEC2Required": "sometimes"}))
    result = runner.invoke(app, ["simulate", "--input", str(bad)])
    assert result.exit_code == 1
    assert "REJECTED" in result.output
    assert "StartStopEC2Required" in result.output


def test_simulate_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "no-such-scenario"])
    assert result.exit_code == 2
    assert "no scenario 'no-such-scenario'" in result.output
    result = runner.invoke(app, ["simulate", "--input", str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_the_installed_command_runs_from_any_directory(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "prepost"
    result = subprocess.run(
        [str(command), "simulate", "--instances", "1", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["status"] == "SUCCEEDED"


def test_bench_prints_its_table() -> None:
    result = runner.invoke(app, ["bench", "--sizes", "2,4"])
    assert result.exit_code == 0, result.output
    for row in ("Lambda invocations", "DynamoDB reads", "DynamoDB writes (items)",
                "largest item", "AWS polling calls", "backup:StartBackupJob",
                "seed's polling design (model)"):  # fmt: skip
        assert row in result.output, row


def test_bench_json_holds_the_figures_of_each_size() -> None:
    result = runner.invoke(app, ["bench", "seed-example", "--sizes", "3,6", "--output", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [size["instances"] for size in document["sizes"]] == [3, 6]
    for size in document["sizes"]:
        assert size["status"] == "SUCCEEDED"
        # A run of a few instances: every scheduled tick of its two hours is counted.
        assert size["lambda_invocations_per_instance"] > 5
        assert size["aws_calls_per_instance"] >= size["dynamodb_writes_per_instance"]
        assert 0 < size["max_aws_calls_per_invocation"] < 200
        assert size["max_aws_calls_handler"]
        assert 1 <= size["max_writes_per_item_per_phase"] < 100
        assert size["dynamodb_capacity_units_per_instance"]["write"] > 0


def test_bench_grows_its_busiest_invocation_with_one_group() -> None:
    small, large = (
        json.loads(runner.invoke(app, ["bench", "--sizes", n, "--output", "json"]).stdout)
        for n in ("2", "8")
    )
    assert (
        large["sizes"][0]["max_aws_calls_per_invocation"]
        > small["sizes"][0]["max_aws_calls_per_invocation"]
    )


@pytest.mark.parametrize("sizes", ["abc", "0", "-3", ",", "10,x"])
def test_bench_refuses_bad_sizes_in_one_sentence(sizes: str) -> None:
    result = runner.invoke(app, ["bench", "--sizes", sizes])
    assert result.exit_code == 2
    assert "--sizes" in result.stderr
    assert "Traceback" not in result.output


def test_simulate_json_counts_the_calls_the_run_made() -> None:
    result = runner.invoke(app, ["simulate", "seed-example", "--instances", "3", "--json"])
    assert result.exit_code == 0, result.output
    calls = json.loads(result.output)["aws_calls"]
    assert calls["ec2:StopInstances"] == 1  # one call for the group's three instances
    assert calls["ec2:StartInstances"] == 1
    assert calls["ssm:SendCommand"] == 2  # the pre-script and the post-script
    assert calls["backup:StartBackupJob"] == 3
    assert calls["events:PutEvents"] >= 1
    assert all(":" in name and count > 0 for name, count in calls.items())


def test_simulate_under_a_stage_applies_its_configuration_as_deployed() -> None:
    # dev allow-lists placeholders, not the example bucket: the seed example is refused
    # there, as it would be by a deployed dev stage, and nothing is touched.
    result = runner.invoke(app, ["simulate", "--stage", "dev", "--instances", "2", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["status"] == "REJECTED"
    assert any("PREPOST_ALLOWED_SCRIPT_SOURCES" in error for error in report["errors"])
    assert not any(name.split(":")[0] in ("ec2", "ssm", "backup") for name in report["aws_calls"])
    local = runner.invoke(app, ["simulate", "--stage", "local", "--instances", "2", "--json"])
    assert json.loads(local.output)["status"] == "SUCCEEDED"


def test_simulate_refuses_an_unknown_stage() -> None:
    result = runner.invoke(app, ["simulate", "--stage", "nope"])
    assert result.exit_code == 2
    assert "no stage 'nope'" in result.output


@pytest.mark.slow
def test_simulate_takes_a_fleet_larger_than_the_stage_limit_and_says_so_under_a_stage() -> None:
    """Local mode's own stage takes any fleet it simulates (up to 100,000); the local
    stage applied as deployed keeps its PREPOST_MAX_INSTANCES_PER_RUN (1,000)."""
    big = ["simulate", "seed-example", "--instances", "1001", "--store", "memory", "--json"]
    result = runner.invoke(app, big)
    assert result.exit_code == 0, result.output[-2000:]
    report = json.loads(result.output)
    assert report["status"] == "SUCCEEDED"
    assert len(report["instances"]) == 1001
    staged = runner.invoke(app, [*big, "--stage", "local"])
    assert json.loads(staged.output)["status"] == "REJECTED"
    too_many = runner.invoke(app, ["simulate", "--instances", "100001"])
    assert too_many.exit_code == 2
