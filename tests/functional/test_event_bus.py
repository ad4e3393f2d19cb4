"""A stage with a dedicated event bus (PREPOST_EVENT_BUS_NAME), in local mode.

The app's own events go to the configured bus and its rules listen there; AWS service
events stay on the default bus. A start event put anywhere else starts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
from typer.testing import CliRunner

from chalicelib.logic.decisions import run_id_for
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import RunStatus
from prepost.cli import app as cli
from prepost.local.cloud import LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome

BUS = "prepost-backup-dev-start"


def test_a_whole_run_on_a_dedicated_bus_keeps_the_apps_events_there(cloud: LocalCloud) -> None:
    cloud.configure_stage(PREPOST_EVENT_BUS_NAME=BUS)
    instances = cloud.launch(2, tags={"backup-job": "true"})

    run_id = cloud.run(seed_input())  # the start event goes on the configured bus

    run, by_instance = outcome(cloud, run_id)
    assert run.status == RunStatus.SUCCEEDED
    assert sorted(by_instance) == sorted(instances)
    entries = [
        entry for params in calls(cloud, "events", "PutEvents") for entry in params["Entries"]
    ]
    detail_types = {entry["DetailType"] for entry in entries}
    assert {"PrePostBackup Phase Requested", "PrePostBackup Run Completed"} <= detail_types
    assert {entry["EventBusName"] for entry in entries} == {BUS}
    # The AWS service events (default bus) reached their handlers too.
    assert cloud.invocations["script_invocation_changed"] >= 4
    assert cloud.invocations["backup_job_changed"] >= 2
    assert cloud.invocations["notify_run_completed"] == 1


def test_a_start_event_on_the_default_bus_starts_nothing(cloud: LocalCloud) -> None:
    cloud.configure_stage(PREPOST_EVENT_BUS_NAME=BUS)
    cloud.launch(1, tags={"backup-job": "true"})

    event = cloud.start_event(seed_input())
    cloud.publish(event, bus="default")
    cloud.drain()

    assert cloud.invocations["start_run_handler"] == 0
    assert calls(cloud, "events", "PutEvents") == []
    run_id = run_id_for(event["id"], AwsEvent.model_validate(event).time)
    assert cloud.store.get_run(run_id) is None

    # The same event on the configured bus does start a run.
    cloud.publish(cloud.start_event(seed_input()))
    cloud.drain()
    assert cloud.invocations["start_run_handler"] == 1


def test_app_events_on_the_default_bus_drive_nothing(cloud: LocalCloud) -> None:
    """Someone who may put events on the default bus cannot forge the app's internal
    events once the app has its own bus."""
    cloud.configure_stage(PREPOST_EVENT_BUS_NAME=BUS)
    cloud.launch(1, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input())
    before = sum(cloud.invocations.values())

    forged = cloud.start_event({"run_id": run_id, "group_id": "g0", "phase": "STOP"})
    forged["detail-type"] = "PrePostBackup Phase Requested"
    cloud.publish(forged, bus="default")
    cloud.drain()

    assert sum(cloud.invocations.values()) == before


def test_the_cli_puts_on_the_configured_bus_unless_told(cloud: LocalCloud, tmp_path: Path) -> None:
    cloud.configure_stage(PREPOST_EVENT_BUS_NAME=BUS)  # sets it in the environment too
    session = boto3.session.Session(region_name=cloud.region)
    sqs, events = session.client("sqs"), session.client("events")
    taps = {}
    for bus in (BUS, "default"):
        queue = sqs.create_queue(QueueName=f"tap-{bus}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        rule = f"tap-{bus}"
        events.put_rule(
            Name=rule, EventBusName=bus, EventPattern=json.dumps({"source": ["prepost-backup"]})
        )
        events.put_targets(
            Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn["Attributes"]["QueueArn"]}]
        )
        taps[bus] = queue

    def received(bus: str) -> list[str]:
        messages = sqs.receive_message(QueueUrl=taps[bus], MaxNumberOfMessages=10)
        return [json.loads(m["Body"])["detail-type"] for m in messages.get("Messages", [])]

    run_input = tmp_path / "run.json"
    run_input.write_text(json.dumps(seed_input()))
    started = CliRunner().invoke(cli, ["start", "--input", str(run_input)])
    assert started.exit_code == 0, started.output
    assert received(BUS) == ["BackupSolution-PrePostScript"]
    assert received("default") == []

    cancelled = CliRunner().invoke(cli, ["cancel", "some-run", "--bus", "default"])
    assert cancelled.exit_code == 0, cancelled.output
    assert received("default") == ["PrePostBackup Cancel Requested"]
    assert received(BUS) == []
