"""The policy coverage check itself: it must refuse what a policy does not allow."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prepost import policies
from prepost.local import STAGE
from prepost.local.cloud import stage_environment
from tests.policy_coverage import (
    NOT_IAM_ACTIONS,
    Call,
    Request,
    check,
    requests_for,
    statement_for,
)

OPTED_IN = {"prepost-backup:opt-in": "true"}
ROLE = "arn:aws:iam::123456789012:role/BackupJobExecutionRole"
TABLE = f"prepost-backup-{STAGE}-state"
TABLE_ARN = f"arn:aws:dynamodb:us-east-1:123456789012:table/{TABLE}"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEYS = "{{KmsKeyArns}}"


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def refused(
    handler: str, operation: str, tags: dict[str, str] | None = None, **params: Any
) -> list[str]:
    service = {"StopInstances": "ec2", "StartInstances": "ec2", "SendCommand": "ssm",
               "StartBackupJob": "backup", "DescribeInstances": "ec2"}[operation]  # fmt: skip
    call = Call(handler, service, operation, params)
    verdict = check([call], STAGE, "us-east-1", TABLE,
                    lambda _: OPTED_IN if tags is None else tags)  # fmt: skip
    return verdict.refused


def test_power_only_on_opted_in_instances_and_only_by_its_function() -> None:
    ids = {"InstanceIds": ["i-0123456789abcdef0"]}
    assert refused("stop_instances", "StopInstances", **ids) == []
    assert refused("stop_instances", "StopInstances", tags={}, **ids)
    assert refused("stop_instances", "StopInstances", tags={"prepost-backup:opt-in": "no"}, **ids)
    assert refused("stop_instances", "StartInstances", **ids)
    assert refused("start_instances", "StartInstances", **ids) == []
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
    verdict = check([call], STAGE, "us-east-1", TABLE, lambda _: {}, overrides)
    return verdict.refused


def test_notifications_go_only_to_the_configured_topic() -> None:
    ops = "arn:aws:sns:us-east-1:123456789012:ops-notifications"
    assert publish_refused(ops, {"PREPOST_NOTIFY_TOPIC_ARN": ops}) == []
    other = "arn:aws:sns:us-east-1:123456789012:someone-else"
    assert publish_refused(other, {"PREPOST_NOTIFY_TOPIC_ARN": ops})


def test_without_a_topic_no_statement_allows_publishing() -> None:
    assert stage_environment(STAGE)["PREPOST_NOTIFY_TOPIC_ARN"] == ""
    rendered = policies.rendered_policies(STAGE)["notify_run_completed"]
    assert [s for s in rendered["Statement"] if s["Sid"] == "NotificationTopic"] == []
    assert "sns:" not in json.dumps(rendered)
    assert publish_refused("arn:aws:sns:us-east-1:123456789012:ops-notifications")
    assert publish_refused(f"arn:aws:sns:us-east-1:123456789012:prepost-backup-{STAGE}-alarms")


def test_an_empty_optional_token_drops_its_statement_and_a_required_one_stops() -> None:
    document = {
        "Statement": [
            {"Sid": "Kept", "Effect": "Allow", "Action": "ec2:StartInstances", "Resource": "*"},
            {"Sid": "Keys", "Effect": "Allow", "Action": "kms:CreateGrant", "Resource": KEYS},
        ]
    }
    values = policies.stage_values(STAGE, "start_instances")
    assert [s["Sid"] for s in policies.render(document, values)["Statement"]] == ["Kept"]
    with_key = values | {"KmsKeyArns": [KEY]}
    [_, keys] = policies.render(document, with_key)["Statement"]
    assert keys["Resource"] == [KEY]
    roles = {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "{{BackupRoleArns}}"}
    required = {"Statement": [roles]}
    with pytest.raises(policies.PolicyError, match="PREPOST_ALLOWED_BACKUP_ROLES"):
        policies.render(required, values | {"BackupRoleArns": []})


# -- DynamoDB transactions: IAM authorises each item by its own action ---------------------------


def transaction(*kinds: str) -> Call:
    items = [{kind: {"TableName": TABLE, "Key": {}}} for kind in kinds]
    return Call("finalize_group", "dynamodb", "TransactWriteItems", {"TransactItems": items})


def transaction_refused(policy_actions: list[str], *kinds: str) -> list[Request]:
    policy = {"Statement": [{"Effect": "Allow", "Action": policy_actions, "Resource": TABLE_ARN}]}
    requests = requests_for(transaction(*kinds), "us-east-1", TABLE, lambda _: {})
    return [r for r in requests if statement_for(policy, r) is None]


def test_a_transaction_is_authorised_item_by_item_not_as_transact_write_items() -> None:
    # What IAM does not know cannot allow anything: this fails if a transaction is mapped
    # to a `dynamodb:TransactWriteItems` request again.
    assert transaction_refused(["dynamodb:TransactWriteItems"], "Update", "Update")
    assert transaction_refused(["dynamodb:UpdateItem"], "Update", "Update") == []
    [refused] = transaction_refused(["dynamodb:UpdateItem"], "Update", "ConditionCheck")
    assert refused.action == "dynamodb:ConditionCheckItem"
    assert refused.resource == TABLE_ARN
    assert {r.action for r in transaction_refused([], "Put", "Delete", "Update")} == {
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
    }


def test_no_policy_lists_an_action_iam_does_not_have() -> None:
    listed = {
        (name, action.lower())
        for name in policies.functions()
        for statement in policies.load(name)["Statement"]
        for action in as_list(statement["Action"])
    }
    assert len(listed) > 50, "the test must see the policies' actions"
    unknown = {action.lower() for action in NOT_IAM_ACTIONS}
    assert sorted((name, a) for name, a in listed if a in unknown) == []


# -- KMS: starting an instance whose volumes use a customer managed key ------------------------


def on_key(instance_id: str) -> list[str]:
    """Every instance has a volume encrypted with KEY."""
    return [KEY]


def start_refused(handler: str, overrides: dict[str, str] | None = None) -> list[str]:
    call = Call(handler, "ec2", "StartInstances", {"InstanceIds": ["i-0123456789abcdef0"]})
    verdict = check([call], STAGE, "us-east-1", TABLE, lambda _: OPTED_IN, overrides, on_key)
    return verdict.refused


@pytest.mark.parametrize("handler", ["start_instances", "reconcile_runs"])
def test_starting_on_a_customer_managed_key_needs_it_configured(handler: str) -> None:
    [message] = start_refused(handler)
    assert "kms:CreateGrant" in message
    assert KEY in message
    assert start_refused(handler, {"PREPOST_KMS_KEY_ARNS": KEY}) == []
    other = KEY.replace("1234abcd", "99999999")
    assert start_refused(handler, {"PREPOST_KMS_KEY_ARNS": other})
    assert start_refused("stop_instances", {"PREPOST_KMS_KEY_ARNS": KEY})


def test_the_key_statement_is_absent_without_keys_and_only_for_aws_resources() -> None:
    for function, policy in policies.rendered_policies(STAGE).items():
        assert "kms:" not in json.dumps(policy), function
    rendered = policies.rendered_policies(STAGE, overrides={"PREPOST_KMS_KEY_ARNS": KEY})
    granting = {
        function: statement
        for function, policy in rendered.items()
        for statement in policy["Statement"]
        if "kms:CreateGrant" in json.dumps(statement)
    }
    assert set(granting) == {"start_instances", "reconcile_runs"}
    for statement in granting.values():
        assert statement["Resource"] == [KEY]
        assert statement["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    # A grant EBS does not ask for (no kms:GrantIsForAWSResource) is not allowed.
    grant = Request("kms:CreateGrant", KEY)
    assert statement_for(rendered["start_instances"], grant) is None


def test_a_kms_key_setting_must_hold_key_arns() -> None:
    with pytest.raises(policies.PolicyError, match="PREPOST_KMS_KEY_ARNS"):
        policies.stage_values(STAGE, "start_instances", {"PREPOST_KMS_KEY_ARNS": "alias/ebs"})
