"""The emulation of what moto lacks is held to botocore's service model."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from chalicelib.models.state import RunStatus
from prepost.local.cloud import BACKUP_SAME_RESOURCE, Behaviour, LocalCloud
from tests.conftest import VAULT
from tests.functional.helpers import calls, outcome

ROLE = "arn:aws:iam::123456789012:role/BackupJobExecutionRole"


def test_backup_requests_are_validated_against_the_service_model(cloud: LocalCloud) -> None:
    backup = cloud.session.client("backup")
    with pytest.raises(ParamValidationError):
        backup.start_backup_job(BackupVaultName=VAULT, IamRoleArn=ROLE)  # no ResourceArn
    with pytest.raises(ParamValidationError):
        backup.start_backup_job(
            BackupVaultName=VAULT, ResourceArn="arn", IamRoleArn=ROLE, StartWindowMinutes="60"
        )


def test_backup_job_lifecycle_and_idempotency(cloud: LocalCloud) -> None:
    backup = cloud.session.client("backup")
    request = {
        "BackupVaultName": VAULT,
        "ResourceArn": "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0",
        "IamRoleArn": ROLE,
        "IdempotencyToken": "token-1",
        "StartWindowMinutes": 60,
    }
    job_id = backup.start_backup_job(**request)["BackupJobId"]
    assert backup.start_backup_job(**request)["BackupJobId"] == job_id  # same token
    assert backup.describe_backup_job(BackupJobId=job_id)["State"] == "CREATED"
    cloud.drain()
    job = backup.describe_backup_job(BackupJobId=job_id)
    assert job["State"] == "COMPLETED"
    assert job["RecoveryPointArn"].startswith("arn:aws:ec2:us-east-1::image/ami-")
    states = [what.split("state=")[1].split()[0] for _, what in cloud.timeline if "state=" in what]
    assert states == ["CREATED", "RUNNING", "COMPLETED"]
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        backup.start_backup_job(**request | {"BackupVaultName": "nope", "IdempotencyToken": "2"})


def test_list_backup_jobs_and_command_invocations(cloud: LocalCloud) -> None:
    from tests.conftest import seed_input

    cloud.behaviour.script_seconds = 3600
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    cloud.publish(cloud.start_event(seed_input()))
    cloud.step(3)  # the pre-script is running
    ssm = cloud.session.client("ssm")
    [invocation] = ssm.list_command_invocations(InstanceId=instance_id)["CommandInvocations"]
    assert invocation["Status"] == "InProgress"
    cloud.drain()
    done = ssm.list_command_invocations(CommandId=invocation["CommandId"])["CommandInvocations"]
    assert [i["Status"] for i in done] == ["Success"]

    backup = cloud.session.client("backup")
    jobs = backup.list_backup_jobs(ByState="COMPLETED")["BackupJobs"]
    assert [j["ResourceArn"].rsplit("/", 1)[1] for j in jobs] == [instance_id]
    assert backup.list_backup_jobs(ByState="FAILED")["BackupJobs"] == []


# -- AWS Backup: one job per resource ------------------------------------------------------

INSTANCE_ARN = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"


def _job_request(token: str) -> dict[str, Any]:
    return {
        "BackupVaultName": VAULT,
        "ResourceArn": INSTANCE_ARN,
        "IamRoleArn": ROLE,
        "IdempotencyToken": token,
        "StartWindowMinutes": 60,
    }


def test_a_second_job_on_a_busy_resource_waits_then_expires(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    behaviour.backup_seconds = 3 * 3600  # outlasts the second job's one-hour start window
    backup = cloud.session.client("backup")
    first = backup.start_backup_job(**_job_request("first"))["BackupJobId"]
    second = backup.start_backup_job(**_job_request("second"))["BackupJobId"]
    assert second != first
    assert backup.start_backup_job(**_job_request("second"))["BackupJobId"] == second
    cloud.step(3)
    assert backup.describe_backup_job(BackupJobId=first)["State"] == "RUNNING"
    assert backup.describe_backup_job(BackupJobId=second)["State"] == "CREATED"
    cloud.drain()
    expired = backup.describe_backup_job(BackupJobId=second)
    assert expired["State"] == "EXPIRED"
    assert expired["StatusMessage"] == BACKUP_SAME_RESOURCE
    assert "RecoveryPointArn" not in expired
    assert backup.describe_backup_job(BackupJobId=first)["State"] == "COMPLETED"
    assert _job_states(cloud, second) == ["CREATED", "EXPIRED"]


def test_a_waiting_job_starts_when_the_running_one_ends(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    behaviour.backup_seconds = 1800  # ends within the second job's start window
    backup = cloud.session.client("backup")
    first = backup.start_backup_job(**_job_request("first"))["BackupJobId"]
    second = backup.start_backup_job(**_job_request("second"))["BackupJobId"]
    cloud.drain()
    assert _job_states(cloud, first) == ["CREATED", "RUNNING", "COMPLETED"]
    assert _job_states(cloud, second) == ["CREATED", "RUNNING", "COMPLETED"]
    times = {(job, state): when for when, job, state in _job_events(cloud)}
    assert times[(second, "RUNNING")] > times[(first, "COMPLETED")]


def _job_events(cloud: LocalCloud) -> list[tuple[datetime, str, str]]:
    found = []
    for when, what in cloud.timeline:
        facts = dict(f.split("=", 1) for f in what.split() if "=" in f)
        if what.startswith("event aws.backup"):
            found.append((when, facts["backupJobId"], facts["state"]))
    return found


def _job_states(cloud: LocalCloud, job_id: str) -> list[str]:
    return [state for _, job, state in _job_events(cloud) if job == job_id]


# -- SSM: an agent that does not answer ------------------------------------------------------


def _send(cloud: LocalCloud, instance_id: str, comment: str = "prepost PRE_SCRIPT") -> str:
    ssm = cloud.session.client("ssm")
    return str(
        ssm.send_command(
            InstanceIds=[instance_id],
            DocumentName="AWS-RunRemoteScript",
            Comment=comment,
            TimeoutSeconds=30,
            Parameters={
                "sourceType": ["S3"],
                "sourceInfo": ['{"path": "https://s3.amazonaws.com/bucket/freeze.sh"}'],
                "commandLine": ["freeze.sh"],
                "executionTimeout": ["60"],
            },
        )["Command"]["CommandId"]
    )


def _ssm_statuses(cloud: LocalCloud, command_id: str) -> tuple[str, str, str]:
    """(GetCommandInvocation Status, its StatusDetails, ListCommandInvocations Status)."""
    ssm = cloud.session.client("ssm")
    [(_, instance_id)] = [key for key in cloud.invocations_ssm if key[0] == command_id]
    got = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    [listed] = ssm.list_command_invocations(CommandId=command_id)["CommandInvocations"]
    assert listed["StatusDetails"] == got["StatusDetails"]
    return got["Status"], got["StatusDetails"], listed["Status"]


def _ssm_events(cloud: LocalCloud) -> list[str]:
    return [
        what.split("status=")[1].split()[0]
        for _, what in cloud.timeline
        if what.startswith("event aws.ssm")
    ]


def test_a_command_to_an_offline_agent_is_delayed_then_times_out_undelivered(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1)
    behaviour.agent_offline.add(instance_id)
    command_id = _send(cloud, instance_id)
    assert _ssm_statuses(cloud, command_id) == ("Pending", "Pending", "Pending")
    cloud.step(1)  # Delayed, a minute later
    assert _ssm_statuses(cloud, command_id) == ("Delayed", "Delayed", "Delayed")
    cloud.drain()  # TimeoutSeconds 30 + executionTimeout 60
    assert _ssm_statuses(cloud, command_id) == ("TimedOut", "Delivery Timed Out", "TimedOut")
    assert _ssm_events(cloud) == ["Delayed", "TimedOut"]
    assert cloud.clock.elapsed().total_seconds() == 90


def test_a_command_runs_when_its_agent_comes_back_in_time(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1)
    behaviour.agent_offline.add(instance_id)
    command_id = _send(cloud, instance_id)
    cloud.set_agent_online(instance_id, after=70)
    cloud.drain()
    assert _ssm_statuses(cloud, command_id) == ("Success", "Success", "Success")
    assert _ssm_events(cloud) == ["Delayed", "InProgress", "Success"]
    assert instance_id not in behaviour.agent_offline


# -- EC2: stops and starts take time ----------------------------------------------------------


def _ec2_events(cloud: LocalCloud, instance_id: str) -> list[str]:
    return [
        what.split("state=")[1].split()[0]
        for _, what in cloud.timeline
        if what.startswith("event aws.ec2") and f"instance-id={instance_id}" in what
    ]


def _described(cloud: LocalCloud, instance_id: str) -> str:
    ec2 = cloud.session.client("ec2")
    [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservation["Instances"][0]["State"]["Name"])


def test_stopping_and_pending_are_real_states(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1)
    ec2 = cloud.session.client("ec2")
    [stopping] = ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"]
    assert stopping["CurrentState"]["Name"] == "stopping"
    assert cloud.state_of(instance_id) == _described(cloud, instance_id) == "stopping"
    with pytest.raises(ClientError, match="IncorrectInstanceState"):
        ec2.start_instances(InstanceIds=[instance_id])
    [again] = ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"]
    assert again["CurrentState"]["Name"] == "stopping"
    cloud.drain()
    assert cloud.state_of(instance_id) == _described(cloud, instance_id) == "stopped"
    assert _ec2_events(cloud, instance_id) == ["stopping", "stopped"]  # one stop, not two

    [pending] = ec2.start_instances(InstanceIds=[instance_id])["StartingInstances"]
    assert pending["CurrentState"]["Name"] == "pending"
    assert cloud.state_of(instance_id) == _described(cloud, instance_id) == "pending"
    with pytest.raises(ClientError, match="IncorrectInstanceState"):
        ec2.stop_instances(InstanceIds=[instance_id])
    cloud.drain()
    assert cloud.state_of(instance_id) == _described(cloud, instance_id) == "running"
    [running] = ec2.start_instances(InstanceIds=[instance_id])["StartingInstances"]
    assert running["CurrentState"]["Name"] == "running"
    cloud.drain()
    assert _ec2_events(cloud, instance_id) == ["stopping", "stopped", "pending", "running"]


def test_a_terminated_instance_can_be_neither_started_nor_stopped(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    gone, stays = cloud.launch(2)
    behaviour.lose_event = lambda event: event["detail"].get("state") == "terminated"
    cloud.terminate([gone], after=100)
    cloud.step(1)
    assert cloud.clock.elapsed().total_seconds() == 100
    assert cloud.state_of(gone) == "shutting-down"
    cloud.drain()
    assert cloud.states_of([gone, stays]) == {gone: "terminated", stays: "running"}
    assert _ec2_events(cloud, gone) == ["shutting-down"]  # the terminated event was lost
    assert any(
        f"lost aws.ec2 EC2 Instance State-change Notification instance-id={gone}" in w
        for _, w in cloud.timeline
    )
    ec2 = cloud.session.client("ec2")
    for call in (ec2.start_instances, ec2.stop_instances):
        with pytest.raises(ClientError, match="IncorrectInstanceState"):
            call(InstanceIds=[gone])


def test_a_run_with_stop_and_start_ends_with_the_instances_running(cloud: LocalCloud) -> None:
    from tests.conftest import seed_input

    ids = cloud.launch(2, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input())
    run, _ = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert cloud.states_of(ids) == dict.fromkeys(ids, "running")
    for instance_id in ids:
        assert _ec2_events(cloud, instance_id) == ["stopping", "stopped", "pending", "running"]


# -- SSM ListCommands: each command with its own instances ------------------------------------


def test_list_commands_names_only_each_commands_own_instances(cloud: LocalCloud) -> None:
    a, b = cloud.launch(2)
    first = _send(cloud, a, "prepost run-1 PRE_SCRIPT")
    cloud.clock.advance_to(cloud.clock.after(120))
    second = _send(cloud, b, "prepost run-2 PRE_SCRIPT")
    ssm = cloud.session.client("ssm")

    [only_a] = ssm.list_commands(InstanceId=a)["Commands"]
    assert (only_a["CommandId"], only_a["InstanceIds"]) == (first, [a])
    [by_id] = ssm.list_commands(CommandId=second)["Commands"]
    assert (by_id["Comment"], by_id["InstanceIds"]) == ("prepost run-2 PRE_SCRIPT", [b])
    later = cloud.clock.after(-60).strftime("%Y-%m-%dT%H:%M:%SZ")
    after = ssm.list_commands(Filters=[{"key": "InvokedAfter", "value": later}])["Commands"]
    assert [c["CommandId"] for c in after] == [second]
    before = ssm.list_commands(Filters=[{"key": "InvokedBefore", "value": later}])["Commands"]
    assert [c["CommandId"] for c in before] == [first]
    with pytest.raises(ClientError, match="InvalidCommandId"):
        ssm.list_commands(CommandId="11111111-2222-3333-4444-555555555555")


# -- refusals ----------------------------------------------------------------------------------


def test_a_refused_call_is_recorded_as_refused(behaviour: Behaviour, cloud: LocalCloud) -> None:
    refused, fine = cloud.launch(2)
    behaviour.power_errors[(refused, "StopInstances")] = "UnsupportedOperation"
    ec2 = cloud.session.client("ec2")
    with pytest.raises(ClientError):
        ec2.stop_instances(InstanceIds=[refused])
    with pytest.raises(ClientError):  # moto's own answer
        ec2.stop_instances(InstanceIds=["i-0000000000000000f"])
    ec2.stop_instances(InstanceIds=[fine])

    assert [p["InstanceIds"] for p in calls(cloud, "ec2", "StopInstances")] == [
        [refused],
        ["i-0000000000000000f"],
        [fine],
    ]
    assert cloud.succeeded("ec2", "StopInstances") == [{"InstanceIds": [fine]}]
    assert [(s, o, p["InstanceIds"], code) for s, o, p, code in cloud.refused] == [
        ("ec2", "StopInstances", [refused], "UnsupportedOperation"),
        ("ec2", "StopInstances", ["i-0000000000000000f"], "InvalidInstanceID.NotFound"),
    ]


def test_transient_refusals_are_answered_in_turn_then_the_call_goes_through(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    a, b = cloud.launch(2)
    behaviour.refuse_calls[(a, "StopInstances")] = ["RequestLimitExceeded", "Unavailable"]
    behaviour.refuse_calls[(b, "SendCommand")] = ["ThrottlingException"]
    ec2 = cloud.session.client("ec2")
    codes = []
    for _ in range(3):
        try:
            ec2.stop_instances(InstanceIds=[a])
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
    assert codes == ["RequestLimitExceeded", "Unavailable"]
    assert len(cloud.succeeded("ec2", "StopInstances")) == 1
    with pytest.raises(ClientError, match="ThrottlingException"):
        _send(cloud, b)
    _send(cloud, b)
    assert len(cloud.succeeded("ssm", "SendCommand")) == 1
    behaviour.refuse_calls[(b, "StartInstances")] = ["RequestLimitExceeded"]
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        ec2.start_instances(InstanceIds=[b])
    ec2.start_instances(InstanceIds=[b])


# -- the harness itself --------------------------------------------------------------------------


def test_launching_mid_run_keeps_the_run_and_the_reconciler_going(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    from chalicelib.logic.decisions import run_id_for
    from chalicelib.models.events import AwsEvent
    from tests.conftest import seed_input

    cloud.launch(2, tags={"backup-job": "true"})
    behaviour.lose_event = lambda event: event["source"] == "aws.ssm"  # the reconciler polls
    event = cloud.start_event(seed_input())
    cloud.publish(event)
    while not calls(cloud, "ssm", "SendCommand"):
        assert cloud.step(1) == 1
    cloud.launch(1, tags={"other": "fleet"})
    cloud.drain()
    run, _ = outcome(cloud, run_id_for(event["id"], AwsEvent.model_validate(event).time))
    assert run.status is RunStatus.SUCCEEDED
    assert any("tick reconcile_runs" in what for _, what in cloud.timeline)


def test_concurrent_copies_of_every_event_still_make_one_clean_run(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    from tests.conftest import seed_input

    behaviour.copies = lambda event: 2
    behaviour.concurrent_copies = True
    ids = cloud.launch(2, tags={"backup-job": "true"})
    run, _ = outcome(cloud, cloud.run(seed_input()))
    assert run.status is RunStatus.SUCCEEDED
    assert cloud.states_of(ids) == dict.fromkeys(ids, "running")
    assert len(cloud.succeeded("backup", "StartBackupJob")) >= 2


def test_concurrent_copies_leave_the_process_environment_as_it_was(behaviour: Behaviour) -> None:
    """Chalice lays the stage's variables over `os.environ` per invocation; concurrent
    copies must not leave `os.environ` a detached copy, nor a stage setting of the cloud in
    the environment its subprocesses inherit."""
    from tests.conftest import VAULT, seed_input

    assert "PREPOST_GROUP_PART_SIZE" not in os.environ
    behaviour.copies = lambda event: 3
    behaviour.concurrent_copies = True
    with LocalCloud(behaviour=behaviour) as local:
        local.create_vault(VAULT)
        local.configure_stage(PREPOST_GROUP_PART_SIZE="2")
        local.launch(4, tags={"backup-job": "true"})
        run, _ = outcome(local, local.run(seed_input()))
        assert run.status is RunStatus.SUCCEEDED
    assert isinstance(os.environ, os._Environ)  # not a plain dict left behind
    inherited = subprocess.run(
        ["sh", "-c", 'echo "${PREPOST_GROUP_PART_SIZE-unset}"'], capture_output=True, text=True
    )
    assert inherited.stdout.strip() == "unset"
