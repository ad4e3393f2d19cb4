"""Package the app for a CloudFormation deployment (operator tooling, not deployed).

    python -m prepost.package --stage prod --out build/package

0. Refuse what must not be deployed: an interpreter other than the functions' runtime
   (`LAMBDA_RUNTIME`), a stage that still holds placeholders (`<your-...>`), and the
   `local` stage that local mode simulates (unless `--for-checks`: the template checks
   lint and scan its template, which nobody deploys).
1. Render every function's policy (`.chalice/policies/<function>.json`) for the stage,
   first, so that a stage that cannot be deployed stops here (exit 2, one line).
2. Build a merge template (`OUT/merge.json`) with what Chalice has no setting for: the
   state table, the dead-letter queue and its policy, a retry policy and dead-letter queue
   on every EventBridge rule target, the async invoke configuration of every function,
   one log group per function, alarms, a dashboard, an optional notification topic, every
   rule on the app's own events pinned to this account and put on the configured bus, that
   bus and its resource policy when it is not the default bus, and the reserved
   concurrency of the functions that fan out.
3. Run `chalice package --merge-template` (no AWS call; it needs the package index for
   `requirements.txt`): `OUT/sam.json` and `OUT/deployment.zip`.
4. Post-process `sam.json`: each function's role gets its rendered policy (Chalice copies
   the file with its `{{Token}}` placeholders) plus the right to send to the dead-letter
   queue; then check that nothing the merge was meant to add is missing.
5. Print the figures the issue asks for: the zip size (< 10 MB, without boto3/botocore)
   and the cold import ratio `import app` / `import boto3` (<= 2); exit 1 if one fails.
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalice.utils import to_cfn_resource_name

from chalicelib import patterns
from chalicelib.models.events import APP_SOURCE, DetailType
from chalicelib.models.state import InstanceStatus, Phase, RunStatus
from chalicelib.observability import NAMESPACE, SERVICE
from chalicelib.patterns import capture_queue_name
from prepost import policies
from prepost.local import ROOT
from prepost.local import STAGE as LOCAL_STAGE
from prepost.local.cloud import stage_environment

APP_NAME = "prepost-backup"
# The functions' runtime. Chalice takes it from the interpreter that runs `chalice package`
# (and downloads wheels for it), and `add_bytecode` compiles with this interpreter: the
# package is only right when the two agree, so any other interpreter is refused.
LAMBDA_RUNTIME = "python3.13"
# How `.chalice/config.json` marks a value the deployer must replace: `<your-...>`.
PLACEHOLDER = re.compile(r"<[^<>\s]+>")
ZIP_LIMIT_BYTES = 10 * 1000 * 1000
IMPORT_RATIO_LIMIT = 2.0
IMPORT_RUNS = 11
NOT_BUNDLED = ("boto3", "botocore", "s3transfer")  # the Lambda runtime provides them

# EventBridge retries a failed delivery to the function (throttling, a missing permission)
# this often, for at most this long, then sends the event to the dead-letter queue.
RULE_RETRY_POLICY = {"MaximumRetryAttempts": 4, "MaximumEventAgeInSeconds": 3600}
# Lambda retries an asynchronous invocation that raised this often, then sends a record of
# it (the event, the error) to the dead-letter queue.
ASYNC_RETRY_ATTEMPTS = 2
ASYNC_MAX_EVENT_AGE_SECONDS = 3600

# The functions that run once per group or per instance of a run: one big run sends them
# thousands of events at once. Each gets PREPOST_RESERVED_CONCURRENCY (default below) as
# its reserved concurrency, so that a run cannot take the account's Lambda concurrency;
# throttled events wait in Lambda's queue (see README, Configuration).
FAN_OUT = (
    "run_scripts",
    "stop_instances",
    "start_backups",
    "start_instances",
    "script_invocation_changed",
    "instance_state_changed",
    "backup_job_changed",
    "finalize_group",
)
DEFAULT_RESERVED_CONCURRENCY = 10
# The events an operator (a listed start principal) may put on a dedicated bus.
OPERATOR_DETAIL_TYPES = (DetailType.START_REQUESTED, DetailType.CANCEL_REQUESTED)
EVENT_BUS = "EventBus"  # the logical id of the dedicated bus

# Metrics the code emits through `observability.count(...)` that need someone's attention.
# `finalize` counts `RUN_<status>` once per finished run.
ALARMED_METRICS = {
    "RunsFailed": (f"RUN_{RunStatus.FAILED}", "a run ended FAILED"),
    "RunsTimedOut": (f"RUN_{RunStatus.TIMED_OUT}", "a run ended TIMED_OUT"),
    "RunsCompletedWithErrors": (
        f"RUN_{RunStatus.COMPLETED_WITH_ERRORS}",
        "a run ended COMPLETED_WITH_ERRORS (a script, a stop or a backup failed)",
    ),
    "InstancesStuckStopped": (
        "InstancesStuckStopped",
        "an instance this run stopped could not be started again (STUCK_STOPPED): act now",
    ),
    "PoisonEvents": ("PoisonEvents", "an event that can never be processed was dropped"),
    "ReconcileErrors": ("ReconcileErrors", "the reconciler failed on a due run or group"),
    "ItemsSetAside": (
        "ItemsSetAside",
        "the reconciler set a run or group aside after repeated failures: see prepost status",
    ),
    "ScheduleErrors": ("ScheduleErrors", "the scheduler failed on a profile"),
}

# The stage's dashboard (`dashboard_resource`), widget by widget; every metric of namespace
# NAMESPACE it names is one the code emits (`tests/unit/test_dashboard.py` scans the code).
# A finalized run counts `RUN_<status>` (`finalize.finalize_run`); a refused start event and
# a missed scheduled slot are runs too, counted by their own metrics.
FINALIZED_RUN_STATUSES = (
    RunStatus.SUCCEEDED,
    RunStatus.COMPLETED_WITH_ERRORS,
    RunStatus.FAILED,
    RunStatus.TIMED_OUT,
    RunStatus.CANCELLED,
)
UNRUN_METRICS = {RunStatus.REJECTED: "RunsRejected", RunStatus.MISSED: "SlotsMissed"}
FINAL_INSTANCE_STATUSES = tuple(s for s in InstanceStatus if s is not InstanceStatus.IN_PROGRESS)
DASHBOARD_WIDTH, DASHBOARD_COLUMNS, WIDGET_HEIGHT = 24, 2, 6

LOG_RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096]
LOG_RETENTION_DAYS += [1827, 2192, 2557, 2922, 3288, 3653]

# checkov findings this template does not fix, each with the reason, written into the
# resource's Metadata where checkov reads them.
FUNCTION_SKIPS = [
    {
        "id": "CKV_AWS_116",
        "comment": "Failed async invocations go to the stack's dead-letter queue through "
        "EventInvokeConfig's OnFailure destination, whose record also carries the error; a "
        "DeadLetterQueue as well would deliver every failure twice.",
    },
    {
        "id": "CKV_AWS_117",
        "comment": "The functions call only AWS APIs and reach no private resource; a VPC "
        "would add NAT or endpoints and cold-start cost for no isolation gain.",
    },
    {
        "id": "CKV_AWS_115",
        "comment": "This function runs once per run or per schedule tick, not once per "
        "instance or group; reserved concurrency is taken from the account's unreserved "
        "pool, so only the fan-out functions get it (PREPOST_RESERVED_CONCURRENCY; 0 turns "
        "it off for accounts with a low concurrency limit).",
    },
    {
        "id": "CKV_AWS_173",
        "comment": "The environment holds names and allow lists, no secret; Lambda encrypts "
        "it at rest with its AWS managed key.",
    },
]
TABLE_SKIPS = [
    {
        "id": "CKV_AWS_119",
        "comment": "Encrypted with the AWS managed key (SSESpecification on); a customer "
        "managed key would need kms grants in every function role and holds no secret "
        "here: the table keeps run records, not credentials.",
    }
]
QUEUE_SKIPS = [
    {
        "id": "CKV_AWS_27",
        "comment": "Encrypted at rest with SQS-managed keys (SqsManagedSseEnabled), which this "
        "check does not recognize. EventBridge cannot use the AWS managed KMS key of SQS, and "
        "a customer managed key whose policy went wrong would lose the very events this "
        "queue exists to keep.",
    }
]
LOG_GROUP_SKIPS = [
    {
        "id": "CKV_AWS_158",
        "comment": "CloudWatch Logs encrypts log data at rest; the logs hold no secret and a "
        "customer managed key would need a key policy for the logs service.",
    },
]


class PackageError(Exception):
    """Packaging cannot go on; the message says why, in one line."""


@dataclass(frozen=True)
class Handler:
    """One Lambda function of the app and the EventBridge rule Chalice makes for it."""

    name: str  # the Python name, e.g. start_run_handler
    scheduled: bool  # a Chalice schedule (SAM `Schedule`) or an event pattern
    pattern: dict[str, Any] | None = field(default=None, compare=False)  # None: scheduled
    queue: bool = False  # fed by the SQS queue of capture polls (SAM `SQS`), not a rule

    @property
    def logical_id(self) -> str:
        return to_cfn_resource_name(self.name)

    @property
    def event_id(self) -> str:
        # The names Chalice gives a function's event source, so that the merge template
        # changes Chalice's own.
        return to_cfn_resource_name(f"{self.name}-sqs-event-source" if self.queue
                                    else f"{self.name}-event")  # fmt: skip

    def function_name(self, stage: str) -> str:
        name = policies.stage_values(stage, self.name)["FunctionName"]
        assert isinstance(name, str)
        return name

    def rule_name(self, stage: str) -> str:
        return self.function_name(stage)  # at most 64 characters, like a function name

    def bus(self, app_bus: str) -> str:
        """The bus its rule listens on (a schedule's rule is on the default bus)."""
        return patterns.listens_on(self.pattern, app_bus) if self.pattern else patterns.DEFAULT_BUS

    def rule_arn(self, stage: str, app_bus: str) -> dict[str, str]:
        """The rule's ARN; a rule on a custom bus has the bus's name in its ARN."""
        bus = self.bus(app_bus)
        on_bus = "" if bus == patterns.DEFAULT_BUS else f"{bus}/"
        return _arn("events", f"rule/{on_bus}{self.rule_name(stage)}")


@dataclass(frozen=True)
class Package:
    """What `package` produced."""

    out: Path
    template: Path
    zip: Path
    merge: Path


# -- the handlers ------------------------------------------------------------------------------


def handlers() -> list[Handler]:
    """Every function the Chalice app defines, from the app itself."""
    from chalice.app import CloudWatchEventConfig, ScheduledEventConfig, SQSEventConfig

    from app import app as chalice_app

    found = []
    for source in chalice_app.event_sources:
        if isinstance(source, ScheduledEventConfig):
            found.append(Handler(source.name, scheduled=True))
        elif isinstance(source, CloudWatchEventConfig):
            found.append(Handler(source.name, scheduled=False, pattern=source.event_pattern))
        elif isinstance(source, SQSEventConfig) and source.queue == patterns.CAPTURE_POLLS:
            found.append(Handler(source.name, scheduled=False, queue=True))
        else:  # a new kind of trigger needs its own retry and dead-letter settings here
            raise PackageError(f"{source.name}: unsupported event source {type(source)}")
    if chalice_app.pure_lambda_functions or chalice_app.routes:
        raise PackageError("only EventBridge handlers are supported by the packager")
    return found


# -- what may be packaged ----------------------------------------------------------------------


def runtime_of(version: tuple[int, ...]) -> str:
    """The Lambda runtime name of a Python version."""
    return f"python{version[0]}.{version[1]}"


def check_runtime(version: tuple[int, ...] = sys.version_info[:2]) -> None:
    """Refuse an interpreter that is not the functions' runtime: Chalice would declare its
    version as the runtime, and the bytecode in the zip would not load on LAMBDA_RUNTIME."""
    if runtime_of(version) != LAMBDA_RUNTIME:
        raise PackageError(
            f"this is {runtime_of(version)}, but the functions run on {LAMBDA_RUNTIME}: "
            f"package with {LAMBDA_RUNTIME} (`make package` finds it; see README, Deploy)"
        )


def check_stage(
    stage: str, for_checks: bool = False, overrides: dict[str, str] | None = None
) -> None:
    """Refuse a stage that must not be deployed: one that still holds placeholders, and
    the local stage, unless it is packaged only for the template checks."""
    env = stage_settings(stage, overrides)
    if stage == LOCAL_STAGE and not for_checks:
        raise PackageError(
            f"stage {stage!r} is what local mode simulates and is never deployed (its allow "
            "lists name a bucket and a role of account 123456789012, which you do not own): "
            "package dev or prod, with your own values"
        )
    unfilled = sorted(key for key, value in env.items() if PLACEHOLDER.search(value))
    if unfilled:
        raise PackageError(
            f"stage {stage!r} still holds placeholders: replace the <...> in "
            + ", ".join(f"stages.{stage}.environment_variables.{key}" for key in unfilled)
            + " in .chalice/config.json with your own values (see README, Deploy)"
        )
    unreadable = settings_problems(env)
    if unreadable:
        raise PackageError(f"stage {stage!r}: " + "; ".join(unreadable))


def settings_problems(env: dict[str, str]) -> list[str]:
    """What the functions would misread in a stage's settings, each naming its key."""
    from pydantic import ValidationError

    from chalicelib.config import settings_from
    from chalicelib.models.s3 import S3Location, S3LocationError

    try:
        settings = settings_from(env)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    except ValueError as exc:  # a number that is not one
        return [f"a numeric setting cannot be read: {exc}"]
    problems = []
    for source in settings.allowed_script_sources:
        try:
            S3Location.parse(source, prefix=True)
        except S3LocationError as exc:
            problems.append(f"PREPOST_ALLOWED_SCRIPT_SOURCES: {source!r} {exc}")
    return problems


# -- policies ----------------------------------------------------------------------------------


def stage_settings(stage: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `.chalice/config.json` gives `stage`, with `overrides` laid over it
    (configuration keys, as a test that packages a variant of a stage sets them)."""
    try:
        return stage_environment(stage) | (overrides or {})
    except KeyError as exc:
        raise PackageError(f"unknown stage {stage!r}: add it to .chalice/config.json") from exc


def render_policies(
    stage: str, names: Iterable[str], overrides: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Every function's policy for `stage`, or a PackageError naming the settings to fix."""
    stage_settings(stage, overrides)
    documents: dict[str, dict[str, Any]] = {}
    missing: dict[str, set[str]] = {}
    for name in names:
        try:
            documents[name] = policies.load(name)
        except FileNotFoundError as exc:
            raise PackageError(f"{name} has no policy file .chalice/policies/{name}.json") from exc
        values = policies.stage_values(stage, name, overrides)
        for token in policies.TOKEN.findall(json.dumps(documents[name])):
            if token in policies.OPTIONAL:  # empty: its statement is left out
                continue
            if values.get(token) in ([], ""):  # the policy would allow nothing
                setting = policies.CONFIG_KEYS.get(token, f"{{{{{token}}}}}")
                missing.setdefault(setting, set()).add(name)
    if missing:
        users = sorted(set().union(*missing.values()))
        raise PackageError(
            f"stage {stage!r} cannot be packaged: {', '.join(sorted(missing))} "
            f"{'is' if len(missing) == 1 else 'are'} empty, and the policies of "
            f"{', '.join(users)} need {'it' if len(missing) == 1 else 'them'}; set "
            + " and ".join(f"stages.{stage}.environment_variables.{key}" for key in sorted(missing))
            + " in .chalice/config.json"
        )
    try:
        return {
            name: policies.render(document, policies.stage_values(stage, name, overrides))
            for name, document in documents.items()
        }
    except policies.PolicyError as exc:
        raise PackageError(f"stage {stage!r}: {exc}") from exc


@dataclass(frozen=True)
class StartBus:
    """A dedicated bus for the app's events, and who may start and cancel runs on it."""

    name: str
    principals: tuple[str, ...]  # IAM role or user ARNs


# An IAM role or user ARN in any partition (an assumed role's aws:PrincipalArn is its role).
PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[\w+=,.@/-]{1,512}")


def start_bus(stage: str, env: dict[str, str]) -> StartBus | None:
    """The stage's dedicated bus, or None when the app uses the default bus. A dedicated
    bus that nobody may put start events on is refused: no run could ever start."""
    name = env.get("PREPOST_EVENT_BUS_NAME", "").strip() or patterns.DEFAULT_BUS
    if name == patterns.DEFAULT_BUS:
        return None
    principals = [p.strip() for p in env.get("PREPOST_START_PRINCIPALS", "").split(",")]
    principals = [p for p in principals if p]
    if not principals:
        raise PackageError(
            f"stage {stage!r} cannot be packaged: PREPOST_START_PRINCIPALS is empty, and the "
            f"dedicated bus {name!r} would let nobody start a run; set "
            f"stages.{stage}.environment_variables.PREPOST_START_PRINCIPALS (comma-separated "
            "IAM role or user ARNs) in .chalice/config.json"
        )
    wrong = [p for p in principals if not PRINCIPAL_ARN.fullmatch(p)]
    if wrong:
        raise PackageError(
            f"stage {stage!r}: PREPOST_START_PRINCIPALS holds what is not an IAM role or "
            f"user ARN: {', '.join(wrong)}"
        )
    return StartBus(name, tuple(principals))


def reserved_concurrency(stage: str, env: dict[str, str]) -> int:
    """PREPOST_RESERVED_CONCURRENCY of the stage: per fan-out function; 0 reserves none."""
    text = env.get("PREPOST_RESERVED_CONCURRENCY", "").strip()
    if not text:
        return DEFAULT_RESERVED_CONCURRENCY
    if not text.isdigit():
        raise PackageError(
            f"stage {stage!r}: PREPOST_RESERVED_CONCURRENCY must be a whole number "
            f"(0: reserve none), not {text!r}"
        )
    return int(text)


# -- the merge template ------------------------------------------------------------------------


def _kebab(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", camel).lower()


def _sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}


def _arn(service: str, resource: str) -> dict[str, str]:
    return _sub(
        f"arn:${{AWS::Partition}}:{service}:${{AWS::Region}}:${{AWS::AccountId}}:{resource}"
    )


def table_resource(table_name: str) -> dict[str, Any]:
    """The state table, from the same CreateTable request the code and the tests use."""
    from chalicelib.gateways.state_store import TTL_ATTRIBUTE, table_definition

    definition = table_definition(table_name)
    same_in_cloudformation = {
        "TableName",
        "KeySchema",
        "AttributeDefinitions",
        "GlobalSecondaryIndexes",
        "BillingMode",
    }
    unknown = set(definition) - same_in_cloudformation
    if unknown:  # e.g. StreamSpecification differs between CreateTable and CloudFormation
        raise PackageError(f"table_definition has keys the packager cannot map: {unknown}")
    return {
        "Type": "AWS::DynamoDB::Table",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Metadata": {"checkov": {"skip": TABLE_SKIPS}},
        "Properties": {
            **definition,
            # The run history outlives the stack (Retain) and a stray DeleteTable too.
            "DeletionProtectionEnabled": True,
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        },
    }


def merge_template(
    stage: str, found: list[Handler], overrides: dict[str, str] | None = None
) -> dict[str, Any]:
    """What `chalice package --merge-template` adds to, or changes in, its template."""
    env = stage_settings(stage, overrides)
    bus = start_bus(stage, env)
    app_bus = bus.name if bus else patterns.DEFAULT_BUS
    reserved = reserved_concurrency(stage, env)
    unknown = set(FAN_OUT) - {handler.name for handler in found}
    if unknown:
        raise PackageError(f"FAN_OUT names functions the app does not have: {sorted(unknown)}")
    prefix = f"{APP_NAME}-{stage}"
    dlq_arn = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    alarm_actions = {
        "Fn::If": ["HasNotificationEmail", [{"Ref": "NotificationTopic"}], {"Ref": "AWS::NoValue"}]
    }
    resources: dict[str, Any] = {
        "StateTable": table_resource(env["PREPOST_TABLE_NAME"]),
        "DeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Metadata": {"checkov": {"skip": QUEUE_SKIPS}},
            "Properties": {
                "QueueName": f"{prefix}-dead-letters",
                # SQS-managed keys: EventBridge cannot use the AWS managed KMS key of SQS.
                "SqsManagedSseEnabled": True,
                "MessageRetentionPeriod": 1209600,  # 14 days, the most SQS keeps
            },
        },
        "DeadLetterQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": "DeadLetterQueue"}],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "ThisStacksRulesSendUndeliveredEvents",
                            "Effect": "Allow",
                            "Principal": {"Service": "events.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": dlq_arn,
                            "Condition": {
                                "ArnEquals": {
                                    "aws:SourceArn": [
                                        handler.rule_arn(stage, app_bus)
                                        for handler in found
                                        if not handler.queue
                                    ]
                                }
                            },
                        },
                        {
                            "Sid": "OnlyOverTls",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "sqs:*",
                            "Resource": dlq_arn,
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        },
                    ],
                },
            },
        },
        "DeadLetterQueueAlarm": {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": f"{prefix}-dead-letters",
                "AlarmDescription": "Events or invocations were dead-lettered: read the queue "
                "(message attributes say why), fix, then replay or delete them.",
                "Namespace": "AWS/SQS",
                "MetricName": "ApproximateNumberOfMessagesVisible",
                "Dimensions": [
                    {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
                ],
                "Statistic": "Maximum",
                **_above_zero(alarm_actions),
            },
        },
        "NotificationKey": {
            "Type": "AWS::KMS::Key",
            "Condition": "HasNotificationEmail",
            "Properties": {
                "Description": f"{prefix}: encrypts the alarm notification topic",
                "EnableKeyRotation": True,
                "KeyPolicy": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "AccountAdministersTheKey",
                            "Effect": "Allow",
                            "Principal": {
                                "AWS": _sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")
                            },
                            "Action": "kms:*",
                            "Resource": "*",
                        },
                        {
                            # The AWS managed key of SNS cannot grant this: alarms could not
                            # publish to a topic encrypted with it.
                            "Sid": "AlarmsPublishToTheTopic",
                            "Effect": "Allow",
                            "Principal": {"Service": "cloudwatch.amazonaws.com"},
                            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                            "Resource": "*",
                            "Condition": {
                                "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
                            },
                        },
                    ],
                },
            },
        },
        "NotificationKeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Condition": "HasNotificationEmail",
            "Properties": {
                "AliasName": f"alias/{prefix}-notifications",
                "TargetKeyId": {"Ref": "NotificationKey"},
            },
        },
        "NotificationTopic": {
            "Type": "AWS::SNS::Topic",
            "Condition": "HasNotificationEmail",
            "Properties": {
                "TopicName": f"{prefix}-alarms",
                "KmsMasterKeyId": {"Ref": "NotificationKey"},
                "Subscription": [{"Protocol": "email", "Endpoint": {"Ref": "NotificationEmail"}}],
            },
        },
    }
    for logical_id, (metric, why) in ALARMED_METRICS.items():
        resources[f"{logical_id}Alarm"] = {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": f"{prefix}-{_kebab(logical_id)}",
                "AlarmDescription": f"prepost-backup ({stage}): {why}.",
                "Namespace": NAMESPACE,
                "MetricName": metric,
                "Dimensions": [{"Name": "service", "Value": SERVICE}],  # Powertools' own
                "Statistic": "Sum",
                **_above_zero(alarm_actions),
            },
        }
    resources |= capture_queue_resources(stage, dlq_arn)
    resources["Dashboard"] = dashboard_resource(stage)
    for handler in found:
        environment: dict[str, Any] = dict(overrides or {})
        if handler.name in CAPTURE_POLLERS:
            environment["PREPOST_CAPTURE_QUEUE_URL"] = {"Ref": CAPTURE_QUEUE}
        function = FunctionSettings(
            app_bus=app_bus,
            reserved_concurrency=reserved if handler.name in FAN_OUT else 0,
            # Chalice reads the environment from .chalice/config.json; overridden keys
            # must reach the functions too.
            environment=environment,
        )
        resources.update(_function_resources(stage, handler, dlq_arn, function))
    if bus is not None:
        resources[EVENT_BUS] = event_bus_resource(bus, found)
    return {
        "Parameters": {
            "NotificationEmail": {
                "Type": "String",
                "Default": "",
                "Description": "Where alarms are mailed (the address must confirm the "
                "subscription). Empty: no topic, the alarms only show in CloudWatch.",
            },
            "LogRetentionInDays": {
                "Type": "Number",
                "Default": 30,
                "AllowedValues": LOG_RETENTION_DAYS,
                "Description": "How long the functions' logs are kept.",
            },
        },
        "Conditions": {
            "HasNotificationEmail": {
                "Fn::Not": [{"Fn::Equals": [{"Ref": "NotificationEmail"}, ""]}]
            }
        },
        "Resources": resources,
        "Outputs": {
            "StateTableName": {"Value": {"Ref": "StateTable"}},
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
            "DashboardName": {"Value": {"Ref": "Dashboard"}},
            "NotificationTopicArn": {
                "Condition": "HasNotificationEmail",
                "Value": {"Ref": "NotificationTopic"},
            },
        },
    }


@dataclass(frozen=True)
class Graph:
    """One metric widget of the dashboard: a time series of `metrics` (each a CloudWatch
    metric array: namespace, name, dimension name and value pairs, rendering options)."""

    title: str
    metrics: list[list[Any]]
    stat: str = "Sum"
    period: int = 300  # seconds
    stacked: bool = False

    def widget(self, index: int) -> dict[str, Any]:
        """The widget, at its place in a grid of DASHBOARD_COLUMNS columns."""
        width = DASHBOARD_WIDTH // DASHBOARD_COLUMNS
        return {
            "type": "metric",
            "x": (index % DASHBOARD_COLUMNS) * width,
            "y": (index // DASHBOARD_COLUMNS) * WIDGET_HEIGHT,
            "width": width,
            "height": WIDGET_HEIGHT,
            "properties": {
                "title": self.title,
                "view": "timeSeries",
                "stacked": self.stacked,
                "stat": self.stat,
                "period": self.period,
                "region": "${AWS::Region}",
                "metrics": self.metrics,
            },
        }


def app_metric(name: str, label: str) -> list[Any]:
    """A metric of the app, with exactly the dimensions Powertools emits it with: `service`
    alone (a query that names other dimensions, or none, finds nothing)."""
    return [NAMESPACE, name, "service", SERVICE, {"label": label}]


def dashboard_resource(stage: str) -> dict[str, Any]:
    """The stage's CloudWatch dashboard, `prepost-backup-<stage>`: runs and instances by
    outcome, instances stuck stopped, the reconciler's errors, the dead-letter queue's
    depth and the phases' durations. Its body is a JSON string, put through `Fn::Sub` for
    the region and the queue's name."""
    runs = [app_metric(f"RUN_{status}", status) for status in FINALIZED_RUN_STATUSES]
    runs += [app_metric(metric, status) for status, metric in UNRUN_METRICS.items()]
    instances = [app_metric(f"INSTANCE_{status}", status) for status in FINAL_INSTANCE_STATUSES]
    queue = ["QueueName", "${DeadLetterQueue.QueueName}", {"label": "messages"}]
    graphs = [
        Graph("Runs by outcome (per hour)", runs, period=3600, stacked=True),
        Graph(
            "Instances by outcome, when their run ends (per hour)",
            instances,
            period=3600,
            stacked=True,
        ),
        Graph(
            "Instances stuck stopped: start them (per 5 minutes)",
            [app_metric("InstancesStuckStopped", "STUCK_STOPPED")],
        ),
        Graph(
            "Reconciler errors (per 5 minutes)",
            [
                app_metric("ReconcileErrors", "errors on a due run or group"),
                app_metric("ItemsSetAside", "runs or groups set aside"),
            ],
        ),
        Graph(
            "Dead-letter queue depth",
            [["AWS/SQS", "ApproximateNumberOfMessagesVisible", *queue]],
            stat="Maximum",
        ),
        Graph(
            "Phase durations in a run, first start to last end (seconds)",
            [app_metric(f"{phase}_DURATION_SECONDS", phase) for phase in Phase],
            stat="Maximum",
            period=3600,
        ),
    ]
    body = {"widgets": [graph.widget(index) for index, graph in enumerate(graphs)]}
    return {
        "Type": "AWS::CloudWatch::Dashboard",
        "Properties": {
            "DashboardName": f"{APP_NAME}-{stage}",
            "DashboardBody": _sub(json.dumps(body, separators=(",", ":"))),
        },
    }


def _above_zero(alarm_actions: Any) -> dict[str, Any]:
    """An alarm's condition: anything at all in five minutes."""
    return {
        "Period": 300,
        "EvaluationPeriods": 1,
        "Threshold": 0,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": alarm_actions,
    }


def event_bus_resource(bus: StartBus, found: list[Handler]) -> dict[str, Any]:
    """The dedicated bus, with a policy that lets the listed principals put start and
    cancel events on it, and the functions their own events, and denies every other
    PutEvents. Same-account principals allowed `events:PutEvents` on `*` by their own
    policies would not be stopped by an Allow here: only the Deny statements stop them
    (see docs/aws-facts.md)."""
    bus_arn = _arn("events", f"event-bus/{bus.name}")
    principals = list(bus.principals)
    # Chalice names each function's role after the function; `template_problems` checks
    # that these are the roles of the packaged functions.
    roles = [{"Fn::GetAtt": [f"{handler.logical_id}Role", "Arn"]} for handler in found]
    put_events = {"Action": "events:PutEvents", "Resource": bus_arn}
    return {
        "Type": "AWS::Events::EventBus",
        "Properties": {
            "Name": bus.name,
            "Policy": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "OperatorsPutStartAndCancelEvents",
                        "Effect": "Allow",
                        "Principal": {"AWS": principals},
                        **put_events,
                        "Condition": {
                            "StringEquals": {
                                "events:source": [APP_SOURCE],
                                "events:detail-type": list(OPERATOR_DETAIL_TYPES),
                            }
                        },
                    },
                    {
                        "Sid": "NobodyElsePutsEvents",
                        "Effect": "Deny",
                        "Principal": "*",
                        **put_events,
                        "Condition": {"ArnNotEquals": {"aws:PrincipalArn": principals + roles}},
                    },
                    {
                        "Sid": "OperatorsPutNoOtherSource",
                        "Effect": "Deny",
                        "Principal": "*",
                        **put_events,
                        "Condition": {
                            "ArnEquals": {"aws:PrincipalArn": principals},
                            "StringNotEquals": {"events:source": [APP_SOURCE]},
                        },
                    },
                    {
                        "Sid": "OperatorsPutNoOtherDetailType",
                        "Effect": "Deny",
                        "Principal": "*",
                        **put_events,
                        "Condition": {
                            "ArnEquals": {"aws:PrincipalArn": principals},
                            "StringNotEquals": {"events:detail-type": list(OPERATOR_DETAIL_TYPES)},
                        },
                    },
                ],
            },
        },
    }


@dataclass(frozen=True)
class FunctionSettings:
    """What the merge template sets on one function besides its rule's retries."""

    app_bus: str  # the bus the app's own events are put on
    reserved_concurrency: int  # 0: none reserved
    environment: dict[str, Any] = field(default_factory=dict, compare=False)


CAPTURE_QUEUE = "CaptureQueue"  # the logical id of the queue of capture polls
# The functions that send capture polls (and so need the queue's URL).
CAPTURE_POLLERS = ("start_backups", "check_capture", "reconcile_runs")
CAPTURE_BATCH_SIZE = 1  # one group per invocation: a failing poll retries alone
CAPTURE_FUNCTION_TIMEOUT = 60  # seconds; `.chalice/config.json` says the same


def capture_queue_resources(stage: str, dlq_arn: Any) -> dict[str, Any]:
    """The SQS queue whose delayed messages are the capture polls of groups waiting for
    their capture (`chalicelib/logic/capture.py`), TLS only; a message that keeps failing
    goes to the dead-letter queue after five receives."""
    queue_arn = {"Fn::GetAtt": [CAPTURE_QUEUE, "Arn"]}
    return {
        CAPTURE_QUEUE: {
            "Type": "AWS::SQS::Queue",
            "Metadata": {"checkov": {"skip": QUEUE_SKIPS}},
            "Properties": {
                "QueueName": capture_queue_name(stage),
                "SqsManagedSseEnabled": True,
                # AWS: at least six times the function's timeout for an SQS event source.
                "VisibilityTimeout": 6 * CAPTURE_FUNCTION_TIMEOUT,
                # A poll older than an hour is moot: the reconciler has looked since.
                "MessageRetentionPeriod": 3600,
                "RedrivePolicy": {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5},
            },
        },
        f"{CAPTURE_QUEUE}Policy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": CAPTURE_QUEUE}],
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "OnlyOverTls",
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "sqs:*",
                            "Resource": queue_arn,
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        }
                    ],
                },
            },
        },
    }


def _function_resources(
    stage: str, handler: Handler, dlq_arn: Any, settings: FunctionSettings
) -> dict[str, Any]:
    function_name = handler.function_name(stage)
    event: dict[str, Any] = {
        "RetryPolicy": RULE_RETRY_POLICY,
        "DeadLetterConfig": {"Arn": dlq_arn},
    }
    if handler.queue:
        event_type = "SQS"
        event = {"Queue": {"Fn::GetAtt": [CAPTURE_QUEUE, "Arn"]}, "BatchSize": CAPTURE_BATCH_SIZE}
    elif handler.scheduled:
        event_type = "Schedule"
        event["Name"] = handler.rule_name(stage)
    else:
        # SAM's CloudWatchEvent has no RetryPolicy or DeadLetterConfig; EventBridgeRule, the
        # same rule under its current name, has both.
        event_type = "EventBridgeRule"
        event["RuleName"] = handler.rule_name(stage)
        assert handler.pattern is not None
        if patterns.is_own(handler.pattern):
            # Whoever may put events on the bus (another account, if a policy allowed it)
            # cannot drive this app: its rules take this account's events only.
            event["Pattern"] = {"account": [{"Ref": "AWS::AccountId"}]}
        if handler.bus(settings.app_bus) != patterns.DEFAULT_BUS:
            event["EventBusName"] = {"Ref": EVENT_BUS}  # also: the bus is created first
    log_group = f"{handler.logical_id}LogGroup"
    properties: dict[str, Any] = {"FunctionName": function_name}
    skips = FUNCTION_SKIPS
    if settings.reserved_concurrency:
        properties["ReservedConcurrentExecutions"] = settings.reserved_concurrency
        skips = [skip for skip in FUNCTION_SKIPS if skip["id"] != "CKV_AWS_115"]
    if settings.environment:
        properties["Environment"] = {"Variables": settings.environment}
    if not handler.queue:  # an SQS event source invokes synchronously: its queue retries
        properties["EventInvokeConfig"] = {
            "MaximumRetryAttempts": ASYNC_RETRY_ATTEMPTS,
            "MaximumEventAgeInSeconds": ASYNC_MAX_EVENT_AGE_SECONDS,
            "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": dlq_arn}},
        }
    return {
        handler.logical_id: {
            # The role may only write to this log group, so it must exist first.
            "DependsOn": [log_group],
            "Metadata": {"checkov": {"skip": skips}},
            "Properties": {
                **properties,
                "Events": {handler.event_id: {"Type": event_type, "Properties": event}},
            },
        },
        log_group: {
            "Type": "AWS::Logs::LogGroup",
            "Metadata": {"checkov": {"skip": LOG_GROUP_SKIPS}},
            "Properties": {
                "LogGroupName": f"/aws/lambda/{function_name}",
                "RetentionInDays": {"Ref": "LogRetentionInDays"},
            },
        },
    }


# -- chalice package and the post-processing ---------------------------------------------------


def run_chalice(stage: str, merge: Path, out: Path) -> None:
    """`chalice package` with the merge template; no AWS call is made."""
    chalice = Path(sys.executable).with_name("chalice")
    env = dict(os.environ)
    env.pop("AWS_PROFILE", None)
    # Chalice wants a region to build its session; no credential is used, and fake ones
    # make sure that nothing could reach a real account.
    env.update(
        AWS_DEFAULT_REGION=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        AWS_ACCESS_KEY_ID="packaging",
        AWS_SECRET_ACCESS_KEY="packaging",
    )
    env.pop("AWS_SESSION_TOKEN", None)
    command = [
        str(chalice),
        "package",
        "--stage",
        stage,
        "--pkg-format",
        "cloudformation",
        "--merge-template",
        str(merge.resolve()),
        str(out.resolve()),
    ]
    # Chalice caches the zip in .chalice/deployments and writes it in place: two packagings
    # at once (tests in parallel workers, `make package`) must not read a half-written one.
    lock_path = ROOT / "build" / ".chalice-package.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise PackageError(f"chalice package failed ({result.returncode}): {output}")


def post_process(
    template: dict[str, Any], rendered: dict[str, dict[str, Any]], found: list[Handler]
) -> None:
    """Give each function's role its rendered policy, then check the merged template."""
    resources = template["Resources"]
    by_logical_id = {handler.logical_id: handler for handler in found}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        function = resource["Properties"]["Handler"].removeprefix("app.")
        if function not in rendered:
            raise PackageError(f"{logical_id}: no policy for function {function}")
        if logical_id not in by_logical_id:
            raise PackageError(f"{logical_id}: not a handler the merge template knows")
        handler = by_logical_id[logical_id]
        if handler.queue:
            # The merge template cannot replace Chalice's queue ARN (a merge joins the two
            # objects): the stage's own queue, here.
            event = resource["Properties"]["Events"][handler.event_id]["Properties"]
            event["Queue"] = {"Fn::GetAtt": [CAPTURE_QUEUE, "Arn"]}
        role_id = resource["Properties"]["Role"]["Fn::GetAtt"][0]
        role = resources[role_id]["Properties"]
        (chalice_policy,) = role["Policies"]  # autogen_policy off: the policy file alone
        role["Policies"] = [
            {"PolicyName": chalice_policy["PolicyName"], "PolicyDocument": rendered[function]},
            {
                "PolicyName": "DeadLetterQueue",
                "PolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Sid": "RecordFailedInvocations",
                            "Effect": "Allow",
                            "Action": "sqs:SendMessage",
                            "Resource": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
                        }
                    ],
                },
            },
        ]
    problems = template_problems(template)
    if problems:
        raise PackageError("the packaged template is incomplete: " + "; ".join(problems))


def template_problems(template: dict[str, Any]) -> list[str]:
    """What the merge should have added but is missing from `template`."""
    problems = []
    resources = template["Resources"]
    if "{{" in json.dumps(template):
        problems.append("a {{Token}} is left unrendered")
    if EVENT_BUS in resources:
        roles = {
            resource["Properties"]["Role"]["Fn::GetAtt"][0]
            for resource in resources.values()
            if resource["Type"] == "AWS::Serverless::Function"
        }
        named = {
            node["Fn::GetAtt"][0]
            for node in _nodes(resources[EVENT_BUS]["Properties"]["Policy"])
            if isinstance(node, dict) and "Fn::GetAtt" in node
        }
        if named != roles:
            problems.append(f"the bus policy names roles {sorted(named)}, not {sorted(roles)}")
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        properties = resource["Properties"]
        if "FunctionName" not in properties:
            problems.append(f"{logical_id} has no FunctionName")
        events = properties.get("Events", {})
        if any(event["Type"] == "SQS" for event in events.values()):
            problems += _queue_problems(logical_id, events, resources)
            continue
        if "OnFailure" not in properties.get("EventInvokeConfig", {}).get("DestinationConfig", {}):
            problems.append(f"{logical_id} has no OnFailure destination")
        for name, event in events.items():
            if event["Type"] not in ("EventBridgeRule", "Schedule"):
                problems.append(f"{logical_id}.{name} is a {event['Type']} event")
            for key in ("RetryPolicy", "DeadLetterConfig"):
                if key not in event["Properties"]:
                    problems.append(f"{logical_id}.{name} has no {key}")
    return problems


def _queue_problems(
    logical_id: str, events: dict[str, Any], resources: dict[str, Any]
) -> list[str]:
    """A queue-fed function: fed by the capture polls' queue only, one message a time, and
    the queue dead-letters what keeps failing (an SQS event source has no OnFailure)."""
    problems = []
    expected = {"Type": "SQS", "Properties": {
        "Queue": {"Fn::GetAtt": [CAPTURE_QUEUE, "Arn"]}, "BatchSize": CAPTURE_BATCH_SIZE,
    }}  # fmt: skip
    for name, event in events.items():
        if event | {"Properties": {k: v for k, v in event["Properties"].items()
                                   if k in expected["Properties"]}} != expected:  # fmt: skip
            problems.append(f"{logical_id}.{name} is not fed by {CAPTURE_QUEUE} one at a time")
    queue = resources.get(CAPTURE_QUEUE, {}).get("Properties", {})
    if "deadLetterTargetArn" not in queue.get("RedrivePolicy", {}):
        problems.append(f"{CAPTURE_QUEUE} has no dead-letter queue")
    return problems


def _nodes(node: Any) -> Iterable[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from _nodes(child)


def package(
    stage: str, out: Path, overrides: dict[str, str] | None = None, for_checks: bool = False
) -> Package:
    """Check, render, merge, `chalice package` and post-process; see the module docstring.
    `overrides`: configuration keys laid over the stage's (a variant of the stage);
    `for_checks`: the local stage may be packaged, for the template checks only."""
    check_runtime()
    check_stage(stage, for_checks, overrides)
    found = handlers()
    rendered = render_policies(stage, [handler.name for handler in found], overrides)
    start_bus(stage, stage_settings(stage, overrides))  # refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("sam.json", "deployment.zip"):
        (out / stale).unlink(missing_ok=True)
    merge = out / "merge.json"
    merge.write_text(json.dumps(merge_template(stage, found, overrides), indent=2) + "\n")
    run_chalice(stage, merge, out)
    template_path = out / "sam.json"
    template = json.loads(template_path.read_text())
    post_process(template, rendered, found)
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    add_bytecode(out / "deployment.zip")
    return Package(out=out, template=template_path, zip=out / "deployment.zip", merge=merge)


def add_bytecode(zip_path: Path) -> None:
    """Compile every module in the zip into its `__pycache__`. Lambda's file system is
    read-only, so Python cannot cache what it compiles: without these, every cold start
    would compile the app and its libraries again. Chalice's runtime is this
    interpreter's version, LAMBDA_RUNTIME (`check_runtime`), so the bytecode matches; it
    is checked by hash, not by timestamps the zip does not keep."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(root)
            modes = {info.filename: info.external_attr for info in archive.infolist()}
        compileall.compile_dir(
            root, quiet=2, workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )  # fmt: skip
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                name = path.relative_to(root).as_posix()
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = modes.get(name, 0o644 << 16)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())


# -- the figures -------------------------------------------------------------------------------


def bundled_sdk(zip_path: Path) -> list[str]:
    """Top-level packages of the zip that the Lambda runtime already provides."""
    with zipfile.ZipFile(zip_path) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    return sorted(top for top in tops if top in NOT_BUNDLED or top.split("-")[0] in NOT_BUNDLED)


def cold_import_seconds(runs: int = IMPORT_RUNS) -> dict[str, float]:
    """The least wall time of a fresh interpreter importing `app`, and `boto3`, over
    `runs` interleaved tries: what the import costs without the machine's noise, which
    only ever adds (a median moved the ratio by 0.3 between runs on a shared 2-core
    machine, with the same code)."""
    samples: dict[str, list[float]] = {"app": [], "boto3": []}
    # The app's bytecode first, as the zip carries it (`add_bytecode`); pip compiled boto3's
    # at install. Then once each, so that no measured run pays for anything else.
    compileall.compile_file(ROOT / "app.py", quiet=2)
    compileall.compile_dir(ROOT / "chalicelib", quiet=2)
    for module in samples:
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    for _ in range(runs):
        for module, times in samples.items():  # interleaved: drift affects both alike
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
            times.append(time.perf_counter() - start)
    return {module: min(times) for module, times in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prepost.package", description=__doc__)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "package")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a configuration key laid over the stage's (repeatable), e.g. to check a "
        "variant of a stage without editing .chalice/config.json",
    )
    parser.add_argument(
        "--for-checks",
        action="store_true",
        help=f"allow the {LOCAL_STAGE} stage, whose template is linted and scanned by "
        "`make template-checks` and never deployed",
    )
    parser.add_argument(
        "--no-import-check",
        action="store_true",
        help="skip the cold-import measurement (a variant of the same code, measured by "
        "another packaging of the same run)",
    )
    args = parser.parse_args(argv)
    overrides = dict(item.partition("=")[::2] for item in args.set)
    if shutil.which("chalice", path=str(Path(sys.executable).parent)) is None:
        print("error: chalice is not installed next to this Python", file=sys.stderr)
        return 2
    try:
        result = package(args.stage, args.out, overrides, args.for_checks)
    except PackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = result.zip.stat().st_size
    sdk = bundled_sdk(result.zip)
    zip_ok = size < ZIP_LIMIT_BYTES and not sdk
    print(f"packaged stage {args.stage}: {result.template} and {result.zip}")
    print(
        f"zip size: {size / 1e6:.2f} MB ({size} bytes; limit {ZIP_LIMIT_BYTES / 1e6:.0f} MB), "
        f"bundled AWS SDK: {', '.join(sdk) or 'none'} [{'ok' if zip_ok else 'FAIL'}]"
    )
    if args.no_import_check:
        return 0 if zip_ok else 1
    times = cold_import_seconds()
    ratio = times["app"] / times["boto3"]
    import_ok = ratio <= IMPORT_RATIO_LIMIT
    print(
        f"cold import: app {times['app']:.3f} s, boto3 {times['boto3']:.3f} s "
        f"(best of {IMPORT_RUNS}); ratio {ratio:.2f} (limit {IMPORT_RATIO_LIMIT:.1f}) "
        f"[{'ok' if import_ok else 'FAIL'}]"
    )
    return 0 if zip_ok and import_ok else 1


if __name__ == "__main__":
    sys.exit(main())
