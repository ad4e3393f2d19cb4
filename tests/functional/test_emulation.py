"""The emulation of what moto lacks is held to botocore's service model."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from prepost.local.cloud import LocalCloud
from tests.conftest import VAULT

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
