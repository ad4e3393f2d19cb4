"""The policy coverage check: is every AWS call a handler made allowed by its policy file?

Local mode records each call a handler makes (botocore's `provide-client-params` hook sees
them all). Each call becomes the IAM requests AWS would authorise: the action, the
resource ARN and the condition keys the call names (an instance's tags, the service a role
is passed to). A request passes when a statement of the function's policy, rendered for the
stage as the packaged template renders it, allows it. There are no Deny statements to
weigh. The `cloud` fixture runs this after every functional test, and the session lists
the actions a policy allows that no test used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from prepost import policies
from prepost.local import STAGE
from prepost.local.cloud import LocalCloud

ACCOUNT, PARTITION = "123456789012", "aws"
# Lambda itself writes the function's logs with these; no handler code calls them.
RUNTIME_ACTIONS = frozenset({"logs:CreateLogStream", "logs:PutLogEvents"})
# The SQS event source mapping of a queue-fed function polls its queue with the function's
# role; no handler code calls these either.
RUNTIME_ACTIONS |= {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
# A folder where each test process notes the (function, action) pairs its handlers used.
USED_DIR = "PREPOST_POLICY_USED_DIR"


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Call:
    handler: str
    service: str
    operation: str
    params: dict[str, Any]


def _arn(service: str, region: str, resource: str, account: str = ACCOUNT) -> str:
    return f"arn:{PARTITION}:{service}:{region}:{account}:{resource}"


# IAM has no action for a transaction: each of its items is authorised by its own action.
TRANSACTION_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}
# Names in the API that IAM does not know as actions (see TRANSACTION_ITEM_ACTIONS).
NOT_IAM_ACTIONS = frozenset({"dynamodb:TransactWriteItems", "dynamodb:TransactGetItems"})


def no_volume_keys(instance_id: str) -> list[str]:
    return []


def requests_for(
    call: Call,
    region: str,
    table: str,
    tags_of: Callable[[str], dict[str, str]],
    keys_of: Callable[[str], list[str]] = no_volume_keys,
) -> list[Request]:
    """The IAM requests one API call makes (the resource-level ones, per the Service
    Authorization Reference; `docs/aws-facts.md` has the links). `keys_of` names the
    customer managed KMS keys of an instance's EBS volumes."""
    action = f"{call.service}:{call.operation}"
    params = call.params
    if call.operation == "TransactWriteItems":
        return [
            Request(
                TRANSACTION_ITEM_ACTIONS[kind],
                _arn("dynamodb", region, f"table/{write['TableName']}"),
            )
            for item in params["TransactItems"]
            for kind, write in item.items()
        ]
    if call.service == "dynamodb":
        resource = _arn("dynamodb", region, f"table/{table}")
        if params.get("IndexName"):
            resource += f"/index/{params['IndexName']}"
        return [Request(action, resource)]
    if call.service == "sqs":  # SendMessage: authorised against the queue its URL names
        queue_account, queue_name = params["QueueUrl"].rstrip("/").split("/")[-2:]
        return [Request(action, _arn("sqs", region, queue_name, account=queue_account))]
    if call.service == "sns":  # Publish: authorised against the topic
        return [Request(action, params["TopicArn"])]
    if call.service == "events":
        buses = {entry.get("EventBusName", "default") for entry in params["Entries"]}
        return [Request(action, _arn("events", region, f"event-bus/{bus}")) for bus in buses]

    def on_instances(tag_key: str) -> list[Request]:
        """One request per instance, its tags as `<tag_key>/<key>` condition keys."""
        return [
            Request(
                action,
                _arn("ec2", region, f"instance/{instance_id}"),
                {f"{tag_key}/{k}": v for k, v in tags_of(instance_id).items()},
            )
            for instance_id in params["InstanceIds"]
        ]

    if call.operation == "StopInstances":
        return on_instances("aws:ResourceTag")
    if call.operation == "StartInstances":
        # EC2 creates a grant on the key of each encrypted volume, on the caller's behalf.
        for_ebs = {"kms:GrantIsForAWSResource": "true"}
        grants = {key for instance_id in params["InstanceIds"] for key in keys_of(instance_id)}
        return [
            *on_instances("aws:ResourceTag"),
            *(Request("kms:CreateGrant", key, for_ebs) for key in sorted(grants)),
        ]
    if call.operation == "SendCommand":
        document = _arn("ssm", region, f"document/{params['DocumentName']}", account="")
        return [Request(action, document), *on_instances("ssm:resourceTag")]
    if call.operation == "StartBackupJob":
        vault = _arn("backup", region, f"backup-vault:{params['BackupVaultName']}")
        passed = {"iam:PassedToService": "backup.amazonaws.com"}
        return [
            Request(action, vault),
            Request("iam:PassRole", params["IamRoleArn"], passed),
        ]
    if call.operation == "CreateTags":  # authorised against each tagged resource
        images = [r for r in params["Resources"] if r.startswith("ami-")]
        others = [r for r in params["Resources"] if not r.startswith("ami-")]
        return [Request(action, f"arn:{PARTITION}:ec2:{region}::image/{i}") for i in images] + [
            Request(action, _arn("ec2", region, f"unknown/{r}")) for r in others
        ]
    # DescribeInstances, DescribeVolumes, DescribeImages, DescribeSnapshots, ListCommands,
    # ListCommandInvocations, DescribeBackupJob, ListBackupJobs, StopBackupJob: no
    # resource-level permissions.
    return [Request(action, "*")]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(statement: dict[str, Any], request: Request) -> bool:
    """Whether one Allow statement allows `request`."""
    if statement.get("Effect") != "Allow":
        raise ValueError(f"only Allow statements are expected: {statement}")
    actions = _listed(statement["Action"])
    if not any(fnmatchcase(request.action.lower(), a.lower()) for a in actions):
        return False
    if not any(fnmatchcase(request.resource, r) for r in _listed(statement["Resource"])):
        return False
    for operator, conditions in statement.get("Condition", {}).items():
        match = {
            "StringEquals": lambda have, want: have == want,
            "Bool": lambda have, want: have.lower() == str(want).lower(),
            "StringLike": fnmatchcase,
            "ArnLike": fnmatchcase,
        }[operator]
        for key, wanted in conditions.items():
            have = request.context.get(key)
            if have is None or not any(match(have, want) for want in _listed(wanted)):
                return False
    return True


def statement_for(policy: dict[str, Any], request: Request) -> dict[str, Any] | None:
    """The first statement of `policy` that allows `request`, if any."""
    return next((s for s in policy["Statement"] if allows(s, request)), None)


@dataclass
class Verdict:
    refused: list[str] = field(default_factory=list)
    used: set[tuple[str, str]] = field(default_factory=set)  # (function, action)


def check(
    calls: Iterable[Call],
    stage: str,
    region: str,
    table: str,
    tags_of: Callable[[str], dict[str, str]],
    overrides: dict[str, str] | None = None,
    keys_of: Callable[[str], list[str]] = no_volume_keys,
) -> Verdict:
    """Check every call against its handler's policy for `stage`, whose configuration
    `overrides` changes (a test that configured a notification topic, say)."""
    pseudo = {"Partition": PARTITION, "Region": region, "AccountId": ACCOUNT}
    rendered = policies.rendered_policies(stage, pseudo, overrides)
    verdict = Verdict()
    for call in calls:
        policy = rendered.get(call.handler)
        if policy is None:
            verdict.refused.append(f"{call.handler} has no policy file")
            continue
        for request in requests_for(call, region, table, tags_of, keys_of):
            if statement_for(policy, request) is None:
                verdict.refused.append(
                    f"{call.handler}: {request.action} on {request.resource} "
                    f"{request.context or ''}is not allowed by its policy"
                )
            verdict.used.add((call.handler, request.action))
    return verdict


def allowed_actions(stage: str = STAGE) -> set[tuple[str, str]]:
    """(function, action) for every action each policy allows."""
    found = set()
    for function, policy in policies.rendered_policies(stage).items():
        for statement in policy["Statement"]:
            for action in _listed(statement["Action"]):
                found.add((function, action))
    return found


def check_cloud(local: LocalCloud) -> list[str]:
    """Check what the handlers of one local cloud called; note what they used; the calls
    their policies refuse."""
    tags: dict[str, dict[str, str]] = {}

    def tags_of(instance_id: str) -> dict[str, str]:
        if not tags:  # every instance's, in one call (one per instance cost seconds)
            for page in local.ec2.get_paginator("describe_instances").paginate():
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        tags[instance["InstanceId"]] = {
                            t["Key"]: t["Value"] for t in instance.get("Tags", [])
                        }
        return tags.get(instance_id, {})

    keys: dict[str, list[str]] = {}

    def keys_of(instance_id: str) -> list[str]:
        if instance_id not in keys:
            keys[instance_id] = local.volume_keys(instance_id)
        return keys[instance_id]

    calls = [Call(*call) for call in local.handler_calls]
    verdict = check(
        calls,
        local.stage,
        local.region,
        local.table_name,
        tags_of,
        local.stage_overrides,
        keys_of,
    )
    if os.environ.get(USED_DIR):
        with open(os.path.join(os.environ[USED_DIR], f"{os.getpid()}.jsonl"), "a") as out:
            out.writelines(json.dumps(used) + "\n" for used in sorted(verdict.used))
    return sorted(set(verdict.refused))
