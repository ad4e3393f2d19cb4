"""Bad input is rejected, never half-acted on (issue 2, item 3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib.models.state import RunRecord, RunStatus
from prepost.local.cloud import LocalCloud
from tests.conftest import LogLines, seed_input
from tests.functional.helpers import completed_events, fleet_calls
from tests.functional.inputs import Detail, backup, change, pre_script, scripts, without

IDS_51 = [f"i-{n:017x}" for n in range(51)]
PRE = "RemoteRunCommandDetails.PreBackupScriptDetails"

INVALID: list[tuple[str, Callable[[Detail], Any], str]] = [
    ("both tag and ids", change(TargetEC2Instances=["i-0123456789abcdef0"]), "TargetEC2Instances"),
    ("neither tag nor ids", without("TargetEC2TagKey"), "TargetEC2TagKey"),
    ("tag key without value", without("TargetEC2TagValue"), "TargetEC2TagValue"),
    ("51 instance ids", lambda d: without("TargetEC2TagKey")(d) | {"TargetEC2Instances": IDS_51}
     | {"TargetEC2TagValue": None}, "TargetEC2Instances"),
    ("malformed instance id", lambda d: {
        k: v for k, v in d.items() if not k.startswith("TargetEC2Tag")
    } | {"TargetEC2Instances": ["web-1"]}, "TargetEC2Instances"),
    ("timeout 29", pre_script(TimeoutInSeconds=29), f"{PRE}.TimeoutInSeconds"),
    ("timeout above 30 days", pre_script(TimeoutInSeconds=2_592_001), f"{PRE}.TimeoutInSeconds"),
    ("timeout not a number", pre_script(TimeoutInSeconds="ten minutes"), f"{PRE}.TimeoutInSeconds"),
    ("two-letter output bucket", pre_script(OutputS3BucketName="ab"), f"{PRE}.OutputS3BucketName"),
    ("empty output prefix", pre_script(OutputS3KeyPrefix=""), f"{PRE}.OutputS3KeyPrefix"),
    ("missing command", without("RemoteRunCommandDetails", "PreBackupScriptDetails",
                                "CommandToRun"), f"{PRE}.CommandToRun"),
    ("script not on S3", pre_script(SourceS3Path="/tmp/freeze.sh"), f"{PRE}.SourceS3Path"),
    ("missing BackupDetails", without("BackupDetails"), "BackupDetails"),
    ("missing vault", without("BackupDetails", "BackupVaultName"), "BackupDetails.BackupVaultName"),
    ("malformed role ARN", backup(IamRoleArn="BackupRole"), "BackupDetails.IamRoleArn"),
    ("role ARN of a user", backup(IamRoleArn="arn:aws:iam::123456789012:user/bob"),
     "BackupDetails.IamRoleArn"),
    ("start window below 60", backup(StartWindowMinutes=30), "BackupDetails.StartWindowMinutes"),
    ("StartStopEC2Required not a boolean", change(StartStopEC2Required="yes"),
     "StartStopEC2Required"),
    ("ids not a list", lambda d: {k: v for k, v in d.items() if not k.startswith("TargetEC2Tag")}
     | {"TargetEC2Instances": "i-0123456789abcdef0"}, "TargetEC2Instances"),
    ("unknown field (typo)", change(StartStopEc2Required=True), "StartStopEc2Required"),
    ("bad GroupBy", change(GroupBy="cluster"), "GroupBy"),
    ("bad OnPreScriptFailure", change(OnPreScriptFailure="ignore"), "OnPreScriptFailure"),
    ("reserved recovery point tag", backup(RecoveryPointTags={"aws:backup": "x"}),
     "BackupDetails.RecoveryPointTags"),
    ("detail is a list", lambda d: [d], "detail"),
    ("detail is a string", lambda d: json.dumps(d), "detail"),
    ("detail is null", lambda d: None, "detail"),
]  # fmt: skip


def rejected_run(cloud: LocalCloud, detail: Any) -> tuple[str, RunRecord]:
    """Run a start event carrying `detail` on a small fleet; its id and REJECTED record."""
    cloud.launch(2, tags={"backup-job": "true"})
    run_id = cloud.run(detail)
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.REJECTED
    return run_id, run


@pytest.mark.parametrize(
    ("mutate", "field"), [pytest.param(m, f, id=name) for name, m, f in INVALID]
)
def test_invalid_input_is_rejected_with_the_field_named_and_nothing_touched(
    cloud: LocalCloud, mutate: Callable[[Detail], Any], field: str
) -> None:
    run_id, run = rejected_run(cloud, mutate(seed_input()))
    assert run.errors
    assert any(message.startswith(f"{field}:") or field in message for message in run.errors), (
        run.errors
    )
    assert fleet_calls(cloud) == []  # no EC2, SSM or Backup call at all
    # Only the run's own record and its completion event are written.
    made = {
        (service, op)
        for service, op, params in cloud.calls
        if params.get("IndexName") != "due"  # the scheduled reconciler looking for work
    }
    assert made == {
        ("dynamodb", "GetItem"),  # is this a redelivered start event?
        ("dynamodb", "PutItem"),  # the REJECTED record, due until announced
        ("events", "PutEvents"),  # PrePostBackup Run Completed
        ("dynamodb", "UpdateItem"),  # noted as announced
    }
    [completed] = completed_events(cloud, run_id)
    assert completed["status"] == "REJECTED"
    assert completed["errors"] == run.errors
    assert cloud.store.list_instances(run_id) == []


def test_at_least_fifteen_distinct_invalid_inputs() -> None:
    assert len({name for name, _, _ in INVALID}) >= 15


def envelope(**changes: Any) -> dict[str, Any]:
    event = {
        "version": "0", "id": "4a7f0c36-0d0b-4c55-8f39-2b1b4f0a1e11",
        "detail-type": "BackupSolution-PrePostScript", "source": "prepost-backup",
        "account": "123456789012", "time": "2026-11-26T02:00:00Z", "region": "us-east-1",
        "resources": [], "detail": seed_input(),
    }  # fmt: skip
    return event | changes


# EventBridge always builds the whole envelope; these carry every field, but wrong ones.
# (An envelope missing fields can only come from invoking the function directly: Chalice
# refuses it before any handler code runs, and Lambda's retry limit bounds the retries.)
@pytest.mark.parametrize(
    "event",
    [
        envelope(time="yesterday"),
        envelope(id={"not": "a string"}),
        envelope(resources="none"),
        envelope(source=42),
    ],
    ids=["time", "id", "resources", "source"],
)
def test_poison_start_event_is_logged_counted_and_acknowledged(
    cloud: LocalCloud, event: Any, capsys: pytest.CaptureFixture[str], logs: LogLines
) -> None:
    result = cloud._chalice.lambda_.invoke("start_run_handler", event).payload
    assert result is None  # acknowledged: returned normally, so no retry loop
    [dropped] = logs.records("start event is not an EventBridge event; dropped")
    assert dropped["level"] == "ERROR"
    assert dropped["event_id"] == event["id"]
    assert '"PoisonEvents":[1.0]' in capsys.readouterr().out  # the metric
    assert fleet_calls(cloud) == []
    assert not cloud.emitted


def test_rejection_is_logged_and_counted(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str], logs: LogLines
) -> None:
    run_id = cloud.run("not an object")
    [rejected] = logs.records("run rejected")
    assert rejected["correlation_id"] == run_id
    assert rejected["errors"] == ["detail: must be a JSON object holding the run input"]
    assert '"RunsRejected":[1.0]' in capsys.readouterr().out


POISON = {
    "run_scripts": {"run_id": "r", "phase": "NOT_A_PHASE", "group_id": "g"},
    "script_invocation_changed": {"command-id": "c", "status": "Success"},  # no instance-id
    "instance_state_changed": {"state": "stopped"},  # no instance-id
    "backup_job_changed": {"state": "COMPLETED"},  # no backupJobId
    "finalize_group": {"run_id": "r", "next_phase": "DONE"},
    "notify_run_completed": {"status": "FAILED"},  # no run_id
}


@pytest.mark.parametrize(("handler", "detail"), POISON.items(), ids=POISON.keys())
def test_every_handler_acknowledges_poison(
    cloud: LocalCloud, handler: str, detail: dict[str, Any], logs: LogLines
) -> None:
    event = envelope(detail=detail)
    assert cloud._chalice.lambda_.invoke(handler, event).payload is None
    [dropped] = logs.records("poison event dropped")
    assert dropped["event_id"] == event["id"]
    assert fleet_calls(cloud) == []


# Each allow list of the dev stage (.chalice/config.json), broken once.
NOT_ALLOWED: list[tuple[str, Callable[[Detail], Any], str]] = [
    ("script from another bucket",
     scripts(SourceS3Path="https://attacker.s3.amazonaws.com/scripts/x.sh"),
     "PostBackupScriptDetails.SourceS3Path"),
    ("script outside the allowed prefix",
     pre_script(SourceS3Path="https://backup-status-bucket-example.s3.amazonaws.com/tmp/x.sh"),
     f"{PRE}.SourceS3Path"),
    ("output to another bucket", pre_script(OutputS3BucketName="somewhere-else"),
     f"{PRE}.OutputS3BucketName"),
    ("another vault", backup(BackupVaultName="other-vault"), "BackupDetails.BackupVaultName"),
    ("another role", backup(IamRoleArn="arn:aws:iam::123456789012:role/Admin"),
     "BackupDetails.IamRoleArn"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "field"), [pytest.param(m, f, id=name) for name, m, f in NOT_ALLOWED]
)
def test_what_the_allow_lists_do_not_name_is_rejected_and_nothing_touched(
    cloud: LocalCloud, mutate: Callable[[Detail], Any], field: str
) -> None:
    _, run = rejected_run(cloud, mutate(seed_input()))
    assert run.reason == "not allowed by this deployment"
    assert any(field in message and "allowed" in message for message in run.errors), run.errors
    assert fleet_calls(cloud) == []


def test_an_empty_allow_list_allows_nothing() -> None:
    from chalicelib.config import Settings
    from chalicelib.logic.policy import violations
    from chalicelib.models.run_input import RunInput

    refused = violations(RunInput.model_validate(seed_input()), Settings(table_name="state"))
    fields = {message.split(":")[0] for message in refused}
    assert fields == {
        f"{PRE}.SourceS3Path", f"{PRE}.OutputS3BucketName",
        "RemoteRunCommandDetails.PostBackupScriptDetails.SourceS3Path",
        "RemoteRunCommandDetails.PostBackupScriptDetails.OutputS3BucketName",
        "BackupDetails.BackupVaultName", "BackupDetails.IamRoleArn",
    }  # fmt: skip


@pytest.mark.parametrize("targeting", ["by tag", "by id"])
def test_a_target_without_the_opt_in_tag_is_rejected_and_nothing_changed(
    cloud: LocalCloud, targeting: str
) -> None:
    tagged = cloud.launch(2, tags={"backup-job": "true"})
    [untagged] = cloud.launch(1, tags={"backup-job": "true"}, opt_in=False)
    detail = seed_input()
    if targeting == "by id":
        detail |= {"TargetEC2Instances": [*tagged, untagged]}
        del detail["TargetEC2TagKey"], detail["TargetEC2TagValue"]
    run_id = cloud.run(detail)

    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.REJECTED
    assert run.reason == "not allowed by this deployment"
    [message] = run.errors
    assert untagged in message
    assert "prepost-backup:opt-in=true" in message
    assert not any(instance_id in message for instance_id in tagged)
    assert fleet_calls(cloud) == [("ec2", "DescribeInstances")]  # looked, changed nothing
    assert cloud.store.list_instances(run_id) == []
    assert all(cloud.state_of(i) == "running" for i in [*tagged, untagged])


def test_the_opt_in_tag_must_match_key_and_value() -> None:
    from chalicelib.config import Settings
    from chalicelib.logic.policy import not_opted_in
    from chalicelib.models.targets import TargetInstance

    settings = Settings(table_name="state", opt_in_tag_key="backup", opt_in_tag_value="yes")

    def target(n: int, **tags: str) -> TargetInstance:
        return TargetInstance(instance_id=f"i-{n:017x}", state="running", owner_id="1", tags=tags)

    assert not_opted_in([target(1, backup="yes")], settings) == []
    refused = not_opted_in([target(n, backup="no") for n in range(25)] + [target(99)], settings)
    assert "and 6 more" in refused[0]
    assert "backup=yes" in refused[0]
