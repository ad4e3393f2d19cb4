"""prepost start / status / runs / cancel, against AWS as moto answers it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from prepost.cli import app
from prepost.local.cloud import LocalCloud
from tests.conftest import seed_input

runner = CliRunner()


@pytest.fixture
def bus(cloud: LocalCloud) -> Callable[[], list[dict[str, Any]]]:
    """What reaches the default bus from prepost-backup, as an SQS target of a rule sees it."""
    session = boto3.session.Session(region_name=cloud.region)
    sqs, events = session.client("sqs"), session.client("events")
    queue = sqs.create_queue(QueueName="bus-tap")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(Name="tap", EventPattern=json.dumps({"source": ["prepost-backup"]}))
    events.put_targets(Rule="tap", Targets=[{"Id": "q", "Arn": arn}])

    def received() -> list[dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            bodies += [json.loads(m["Body"]) for m in batch]
        return bodies

    return received


def test_start_checks_the_input_then_puts_the_start_event(
    cloud: LocalCloud, tmp_path: Path, bus: Callable[[], list[dict[str, Any]]]
) -> None:
    good = tmp_path / "run.json"
    good.write_text(json.dumps(seed_input()))
    result = runner.invoke(app, ["start", "--input", str(good)])
    assert result.exit_code == 0, result.output
    run_id = re.search(r"run id (\S+)", result.output)
    assert run_id is not None
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{10}", run_id.group(1))
    [event] = [e for e in bus() if e["detail-type"] == "BackupSolution-PrePostScript"]
    assert event["detail"] == seed_input()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(seed_input() | {"TargetEC2Instances": ["i-1"]}))
    result = runner.invoke(app, ["start", "--input", str(bad)])
    assert result.exit_code == 2
    assert "invalid run input" in result.output
    assert "TargetEC2Instances" in result.output


def test_status_runs_and_cancel(cloud: LocalCloud, bus: Callable[[], list[dict[str, Any]]]) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input())
    table = ["--table", cloud.table_name]

    shown = runner.invoke(app, ["status", run_id, *table])
    assert shown.exit_code == 0, shown.output
    assert "run status: SUCCEEDED" in shown.output
    as_json = json.loads(runner.invoke(app, ["status", run_id, "--json", *table]).output)
    assert as_json["status"] == "SUCCEEDED"
    assert {i["status"] for i in as_json["instances"]} == {"SUCCEEDED"}
    assert as_json["instances"][0]["phases"]["BACKUP"]["recovery_point_arn"]

    listed = runner.invoke(app, ["runs", *table])
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output

    cancelled = runner.invoke(app, ["cancel", run_id, "--reason", "test"])
    assert cancelled.exit_code == 0, cancelled.output
    [event] = [e for e in bus() if e["detail-type"] == "PrePostBackup Cancel Requested"]
    assert event["detail"] == {"run_id": run_id, "reason": "test"}


def test_clear_errors(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown = runner.invoke(app, ["status", "no-such-run", "--table", cloud.table_name])
    assert unknown.exit_code == 3  # AWS has no such thing
    assert unknown.stdout == ""
    assert "no run 'no-such-run'" in unknown.output

    missing = runner.invoke(app, ["status", "r", "--table", "not-deployed"])
    assert missing.exit_code == 3
    assert "table 'not-deployed' not found" in missing.output

    monkeypatch.delenv("PREPOST_TABLE_NAME", raising=False)
    unnamed = runner.invoke(app, ["runs"])
    assert unnamed.exit_code == 2  # a usage error
    assert "--table or PREPOST_TABLE_NAME" in unnamed.output


def test_no_credentials_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role look-up
    result = runner.invoke(app, ["runs", "--table", "t"])
    assert result.exit_code == 3
    assert "no AWS credentials found" in result.stderr


def test_start_names_a_stored_profile(
    cloud: LocalCloud, tmp_path: Path, bus: Callable[[], list[dict[str, Any]]]
) -> None:
    """A start event may name a profile instead of carrying the input: so may `start`."""
    reference = tmp_path / "start.json"
    reference.write_text(json.dumps({"Profile": "nightly-db"}))
    result = runner.invoke(app, ["start", "--input", str(reference), "--output", "json"])
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{10}", started["run_id"])
    [event] = [e for e in bus() if e["detail-type"] == "BackupSolution-PrePostScript"]
    assert event["detail"] == {"Profile": "nightly-db"}
    assert event["id"] == started["event_id"]
