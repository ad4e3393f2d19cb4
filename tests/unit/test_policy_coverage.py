"""The policy coverage check itself: it must refuse what a policy does not allow."""

from __future__ import annotations

from typing import Any

import pytest

from prepost import policies
from tests.policy_coverage import Call, check

OPTED_IN = {"prepost-backup:opt-in": "true"}
ROLE = "arn:aws:iam::123456789012:role/BackupJobExecutionRole"


def refused(
    handler: str, operation: str, tags: dict[str, str] | None = None, **params: Any
) -> list[str]:
    service = {"StopInstances": "ec2", "StartInstances": "ec2", "SendCommand": "ssm",
               "StartBackupJob": "backup", "DescribeInstances": "ec2"}[operation]  # fmt: skip
    call = Call(handler, service, operation, params)
    verdict = check([call], "dev", "us-east-1", "prepost-backup-dev-state",
                    lambda _: OPTED_IN if tags is None else tags)  # fmt: skip
    return verdict.refused


def test_power_only_on_opted_in_instances_and_only_by_its_function() -> None:
    ids = {"InstanceIds": ["i-0123456789abcdef0"]}
    assert refused("stop_instances", "StopInstances", **ids) == []
    assert refused("stop_instances", "StopInstances", tags={}, **ids)
    assert refused("stop_instances", "StopInstances", tags={"prepost-backup:opt-in": "no"}, **ids)
    assert refused("stop_instances", "StartInstances", **ids)
    assert refused("finalize_group", "StopInstances", **ids)


def test_scripts_only_with_the_document_on_opted_in_instances() -> None:
    send = {"InstanceIds": ["i-0123456789abcdef0"], "DocumentName": "AWS-RunRemoteScript"}
    assert refused("run_scripts", "SendCommand", **send) == []
    assert refused("run_scripts", "SendCommand", tags={}, **send)
    assert refused("run_scripts", "SendCommand", **(send | {"DocumentName": "AWS-RunShellScript"}))
    assert refused("start_backups", "SendCommand", **send)


def test_backups_only_to_allowed_vaults_passing_allowed_roles() -> None:
    job = {"BackupVaultName": "prepost-vault", "IamRoleArn": ROLE}
    assert refused("start_backups", "StartBackupJob", **job) == []
    assert refused("start_backups", "StartBackupJob", **(job | {"BackupVaultName": "other"}))
    other_role = job | {"IamRoleArn": "arn:aws:iam::123456789012:role/Admin"}
    [message] = refused("start_backups", "StartBackupJob", **other_role)
    assert "iam:PassRole" in message


def test_a_stage_that_allows_no_backup_role_cannot_be_rendered() -> None:
    with pytest.raises(policies.PolicyError, match=r"PREPOST_ALLOWED_BACKUP_(ROLES|VAULTS)"):
        policies.rendered_policies("prod")


def publish_refused(topic_arn: str, overrides: dict[str, str] | None = None) -> list[str]:
    call = Call("notify_run_completed", "sns", "Publish", {"TopicArn": topic_arn})
    verdict = check([call], "dev", "us-east-1", "prepost-backup-dev-state",
                    lambda _: {}, overrides)  # fmt: skip
    return verdict.refused


def test_notifications_go_only_to_the_configured_topic() -> None:
    ops = "arn:aws:sns:us-east-1:123456789012:ops-notifications"
    assert publish_refused(ops, {"PREPOST_NOTIFY_TOPIC_ARN": ops}) == []
    other = "arn:aws:sns:us-east-1:123456789012:someone-else"
    assert publish_refused(other, {"PREPOST_NOTIFY_TOPIC_ARN": ops})


def test_without_a_topic_the_policy_still_renders_and_names_only_the_stage_namespace() -> None:
    [statement] = [s for s in policies.load("notify_run_completed")["Statement"]
                   if s["Sid"] == "NotificationTopic"]  # fmt: skip
    values = policies.stage_values("dev", "notify_run_completed")
    assert policies.render(statement, values)["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:prepost-backup-dev-*"
    }
    assert publish_refused("arn:aws:sns:us-east-1:123456789012:ops-notifications")
    assert publish_refused("arn:aws:sns:us-east-1:123456789012:prepost-backup-prod-alarms")
