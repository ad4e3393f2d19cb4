"""The packaged CloudFormation template (`make package`): what the deployment relies on.

The packager runs twice for the module (Chalice itself, with the merge template) on the
local stage, as `make template-checks` does (`--for-checks`: its example values are never
deployed): as configured, and with a dedicated event bus (configuration keys laid over the
stage's, as `python -m prepost.package --set` does); the tests read the `sam.json` they
produced. No AWS call is made.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chalicelib import patterns
from chalicelib.gateways.state_store import TTL_ATTRIBUTE, table_definition
from chalicelib.models.state import RunStatus
from prepost import package, policies
from prepost.local import ROOT
from prepost.local import STAGE as LOCAL_STAGE
from prepost.local.cloud import stage_environment

STAGE = LOCAL_STAGE
DLQ_ARN = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
BUS = "prepost-backup-dev-start"
OPERATORS = [
    "arn:aws:iam::123456789012:role/BackupOperator",
    "arn:aws:iam::123456789012:user/ops/alice",
]
WITH_BUS = {"PREPOST_EVENT_BUS_NAME": BUS, "PREPOST_START_PRINCIPALS": ",".join(OPERATORS)}
# The rules on the app's own events (source prepost-backup), and the functions that run
# once per group or per instance.
ON_APP_EVENTS = {
    "start_run_handler",
    "cancel_run",
    "run_scripts",
    "stop_instances",
    "start_backups",
    "start_instances",
    "finalize_group",
    "notify_run_completed",
}
FAN_OUT = {
    "run_scripts",
    "stop_instances",
    "start_backups",
    "start_instances",
    "script_invocation_changed",
    "instance_state_changed",
    "backup_job_changed",
    "finalize_group",
}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> package.Package:
    return package.package(STAGE, tmp_path_factory.mktemp("package"), for_checks=True)


@pytest.fixture(scope="module")
def template(packaged: package.Package) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(packaged.template.read_text())
    return loaded


@pytest.fixture(scope="module")
def bus_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    packaged = package.package(
        STAGE, tmp_path_factory.mktemp("package-bus"), WITH_BUS, for_checks=True
    )
    loaded: dict[str, Any] = json.loads(packaged.template.read_text())
    return loaded


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return of_type(template, "AWS::Serverless::Function")


def ruled(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The functions an EventBridge rule or schedule invokes (not the queue-fed one)."""
    return {
        logical_id: function
        for logical_id, function in functions(template).items()
        if not any(e["Type"] == "SQS" for e in function["Properties"]["Events"].values())
    }


def python_name(function: dict[str, Any]) -> str:
    name: str = function["Properties"]["Handler"].removeprefix("app.")
    return name


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from walk(child)


def statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every policy statement of the template: roles, queue policies, key policies."""
    for logical_id, resource in template["Resources"].items():
        for node in walk(resource.get("Properties", {})):
            if isinstance(node, dict) and isinstance(node.get("Statement"), list):
                for statement in node["Statement"]:
                    yield logical_id, statement


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_every_handler_of_the_app_is_packaged(template: dict[str, Any]) -> None:
    from app import app as chalice_app

    expected = {source.name for source in chalice_app.event_sources}
    assert {python_name(f) for f in functions(template).values()} == expected
    assert len(expected) >= 11


def test_state_table_uses_the_key_schema_of_the_code(template: dict[str, Any]) -> None:
    (table,) = of_type(template, "AWS::DynamoDB::Table").values()
    table_name = stage_environment(STAGE)["PREPOST_TABLE_NAME"]
    definition = table_definition(table_name)
    properties = table["Properties"]
    for key in ("TableName", "KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes"):
        assert properties[key] == definition[key], key
    assert properties["BillingMode"] == definition["BillingMode"]
    assert [i["IndexName"] for i in properties["GlobalSecondaryIndexes"]] == ["due"]
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["SSESpecification"]["SSEEnabled"] is True
    assert properties["TimeToLiveSpecification"] == {
        "AttributeName": TTL_ATTRIBUTE,
        "Enabled": True,
    }
    assert TTL_ATTRIBUTE == "expires_at"
    assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
    assert properties["DeletionProtectionEnabled"] is True


def test_every_rule_target_retries_then_dead_letters(template: dict[str, Any]) -> None:
    rule_names = []
    assert set(functions(template)) - set(ruled(template)) == {"CheckCapture"}
    for logical_id, function in ruled(template).items():
        events = function["Properties"]["Events"]
        assert len(events) == 1, logical_id
        for event in events.values():
            # CloudWatchEvent cannot carry RetryPolicy or DeadLetterConfig in SAM.
            assert event["Type"] in ("EventBridgeRule", "Schedule"), logical_id
            properties = event["Properties"]
            retry = properties["RetryPolicy"]
            assert 0 <= retry["MaximumRetryAttempts"] <= 185
            assert 60 <= retry["MaximumEventAgeInSeconds"] <= 86400
            assert properties["DeadLetterConfig"] == {"Arn": DLQ_ARN}
            rule_names.append(properties.get("RuleName") or properties.get("Name"))
    assert all(rule_names)
    # The queue takes undelivered events from these rules, and no other sender.
    policy = template["Resources"]["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    (statement, tls_only) = policy["Statement"]
    assert tls_only == {
        "Sid": "OnlyOverTls",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "sqs:*",
        "Resource": DLQ_ARN,
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    allowed = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
    assert sorted(arn["Fn::Sub"].rsplit(":rule/", 1)[1] for arn in allowed) == sorted(rule_names)
    queue = template["Resources"]["DeadLetterQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True


def test_the_capture_polls_come_one_at_a_time_from_a_queue_that_dead_letters(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    function = functions(template)["CheckCapture"]["Properties"]
    (event,) = function["Events"].values()
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["CaptureQueue", "Arn"]}
    assert event["Properties"]["BatchSize"] == 1
    queue = resources["CaptureQueue"]["Properties"]
    assert queue["QueueName"] == "prepost-backup-local-capture-polls"
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": 5}
    # AWS: an event source's queue hides a message at least six times the function's timeout.
    assert queue["VisibilityTimeout"] >= 6 * function["Timeout"]
    (tls_only,) = resources["CaptureQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert tls_only["Effect"] == "Deny"
    assert tls_only["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # The functions that send polls know the queue's URL; no other does.
    knowing = {
        logical_id
        for logical_id, f in functions(template).items()
        if "PREPOST_CAPTURE_QUEUE_URL" in f["Properties"]["Environment"]["Variables"]
    }
    assert knowing == {"StartBackups", "CheckCapture", "ReconcileRuns"}
    for logical_id in knowing:
        variables = functions(template)[logical_id]["Properties"]["Environment"]["Variables"]
        assert variables["PREPOST_CAPTURE_QUEUE_URL"] == {"Ref": "CaptureQueue"}


def test_every_function_sends_failed_invocations_to_the_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for logical_id, function in ruled(template).items():
        config = function["Properties"]["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == 2, logical_id
        assert config["DestinationConfig"]["OnFailure"] == {"Type": "SQS", "Destination": DLQ_ARN}
        # Lambda sends the record with the function's role.
        role = resources[function["Properties"]["Role"]["Fn::GetAtt"][0]]
        sends = [
            s
            for policy in role["Properties"]["Policies"]
            for s in policy["PolicyDocument"]["Statement"]
            if "sqs:SendMessage" in as_list(s["Action"])
        ]
        polls = [s for s in sends if "capture-polls" in json.dumps(s["Resource"])]
        assert [s["Resource"] for s in sends if s not in polls] == [DLQ_ARN], logical_id


def test_roles_carry_the_rendered_policy_files(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for function in functions(template).values():
        name = python_name(function)
        role = resources[function["Properties"]["Role"]["Fn::GetAtt"][0]]
        documents = [p["PolicyDocument"] for p in role["Properties"]["Policies"]]
        expected = policies.render(policies.load(name), policies.stage_values(STAGE, name))
        assert documents[0] == expected, name
    text = json.dumps(template)
    assert "{{" not in text
    # `${AWS::...}` is only ever used inside Fn::Sub, where CloudFormation fills it.
    for node in walk(template):
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and "${AWS::" in value:
                    assert key == "Fn::Sub", value


@pytest.mark.parametrize("variant", ["template", "bus_template"])
def test_no_policy_allows_any_principal(variant: str, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue(variant)
    found = list(statements(template))
    principals = [s.get("Principal") for _, s in found if s["Effect"] == "Allow"]
    assert any(principals), "the template has resource policies: the test must see them"
    for principal in principals:
        assert principal != "*"
        if isinstance(principal, dict):
            for value in principal.values():
                assert "*" not in as_list(value), principal
    # Anyone appears only to be denied: the queue refuses requests without TLS; the bus
    # refuses everyone but the principals its condition names.
    anyone = [(i, s) for i, s in found if s.get("Principal") in ("*", {"AWS": "*"})]
    assert ("DeadLetterQueuePolicy", "Deny") in [(i, s["Effect"]) for i, s in anyone]
    for logical_id, statement in anyone:
        assert statement["Effect"] == "Deny", (logical_id, statement)
        condition = json.dumps(statement["Condition"])
        assert "aws:PrincipalArn" in condition or "aws:SecureTransport" in condition


def test_pass_role_names_the_allowed_backup_roles_only(template: dict[str, Any]) -> None:
    allowed = stage_environment(STAGE)["PREPOST_ALLOWED_BACKUP_ROLES"].split(",")
    passing = [
        (logical_id, s)
        for logical_id, s in statements(template)
        if s["Effect"] == "Allow"
        and any(a in ("iam:PassRole", "iam:*", "*") for a in as_list(s["Action"]))
    ]
    assert {logical_id for logical_id, _ in passing} == {"StartBackupsRole", "ReconcileRunsRole"}
    for _, statement in passing:
        resources = as_list(statement["Resource"])
        assert not any("*" in json.dumps(resource) for resource in resources), resources
        assert sorted(resources) == sorted(allowed)
        assert statement["Condition"] == {
            "StringEquals": {"iam:PassedToService": "backup.amazonaws.com"}
        }


def rules(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The properties of each function's rule, by the function's Python name."""
    found = {}
    for function in ruled(template).values():
        (event,) = function["Properties"]["Events"].values()
        found[python_name(function)] = event["Properties"]
    return found


@pytest.mark.parametrize("variant", ["template", "bus_template"])
def test_every_rule_on_the_apps_events_is_pinned_to_this_account(
    variant: str, request: pytest.FixtureRequest
) -> None:
    from app import app as chalice_app

    subscribed = {
        source.name: source.event_pattern
        for source in chalice_app.event_sources
        if hasattr(source, "event_pattern")
    }
    on_app_events = {n for n, p in subscribed.items() if p["source"] == ["prepost-backup"]}
    assert on_app_events == ON_APP_EVENTS
    for name, rule in rules(request.getfixturevalue(variant)).items():
        if name in ON_APP_EVENTS:
            assert rule["Pattern"] == {**subscribed[name], "account": [{"Ref": "AWS::AccountId"}]}
        else:  # AWS services' events carry the account they happened in; schedules
            assert "account" not in rule.get("Pattern", {}), name
    assert patterns.START_RUN["source"] == ["prepost-backup"]
    assert patterns.START_RUN["detail-type"] == ["BackupSolution-PrePostScript"]


def test_on_the_default_bus_every_rule_listens_there(template: dict[str, Any]) -> None:
    assert not of_type(template, "AWS::Events::EventBus")
    for name, rule in rules(template).items():
        assert rule.get("EventBusName", "default") == "default", name


def test_the_apps_rules_listen_on_the_dedicated_bus(bus_template: dict[str, Any]) -> None:
    """The app puts its events on PREPOST_EVENT_BUS_NAME: its rules must listen there,
    and the AWS service rules on the default bus, the only one AWS services put on."""
    (bus_id,) = of_type(bus_template, "AWS::Events::EventBus")
    assert bus_template["Resources"][bus_id]["Properties"]["Name"] == BUS
    for name, rule in rules(bus_template).items():
        if name in ON_APP_EVENTS:
            assert rule["EventBusName"] == {"Ref": bus_id}, name
        else:
            assert rule.get("EventBusName", "default") == "default", name
    # The functions put their events on that bus.
    for function in functions(bus_template).values():
        variables = function["Properties"]["Environment"]["Variables"]
        assert variables["PREPOST_EVENT_BUS_NAME"] == BUS
    # A rule on a custom bus has the bus's name in its ARN: the dead-letter queue must
    # accept its undelivered events under that ARN.
    policy = bus_template["Resources"]["DeadLetterQueuePolicy"]["Properties"]["PolicyDocument"]
    allowed = {
        arn["Fn::Sub"].rsplit(":rule/", 1)[1]
        for arn in policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]
    }
    expected = {
        (f"{BUS}/" if name in ON_APP_EVENTS else "") + (rule.get("RuleName") or rule["Name"])
        for name, rule in rules(bus_template).items()
    }
    assert allowed == expected


def test_the_dedicated_bus_lets_only_operators_and_functions_put_events(
    bus_template: dict[str, Any],
) -> None:
    (bus,) = of_type(bus_template, "AWS::Events::EventBus").values()
    policy = bus["Properties"]["Policy"]
    by_sid = {statement["Sid"]: statement for statement in policy["Statement"]}
    arn_prefix = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}"
    bus_arn = {"Fn::Sub": f"{arn_prefix}:event-bus/{BUS}"}
    operator_events = {
        "events:source": ["prepost-backup"],
        "events:detail-type": ["BackupSolution-PrePostScript", "PrePostBackup Cancel Requested"],
    }
    for statement in policy["Statement"]:
        assert statement["Action"] == "events:PutEvents"
        assert statement["Resource"] == bus_arn
    allow = by_sid["OperatorsPutStartAndCancelEvents"]
    assert allow["Effect"] == "Allow"
    assert allow["Principal"] == {"AWS": OPERATORS}
    assert allow["Condition"] == {"StringEquals": operator_events}

    # An Allow does not stop a same-account principal whose own policy allows PutEvents
    # on *: a Deny for every principal but the operators and the functions' roles does.
    roles = [
        {"Fn::GetAtt": [function["Properties"]["Role"]["Fn::GetAtt"][0], "Arn"]}
        for function in functions(bus_template).values()
    ]
    assert len(roles) >= 11
    deny_others = by_sid["NobodyElsePutsEvents"]
    assert deny_others["Effect"] == "Deny"
    assert deny_others["Principal"] == "*"
    excepted = deny_others["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert sorted(map(json.dumps, excepted)) == sorted(map(json.dumps, OPERATORS + roles))

    # The operators may put start and cancel events, nothing else.
    denied_to_operators = {}
    for statement in policy["Statement"]:
        condition = statement["Condition"]
        if statement["Effect"] == "Deny" and "ArnEquals" in condition:
            assert statement["Principal"] == "*"
            assert condition["ArnEquals"] == {"aws:PrincipalArn": OPERATORS}
            denied_to_operators.update(condition["StringNotEquals"])
    assert denied_to_operators == operator_events
    assert len(policy["Statement"]) == 4


def test_fan_out_functions_have_reserved_concurrency(bus_template: dict[str, Any]) -> None:
    default = int(stage_environment(STAGE)["PREPOST_RESERVED_CONCURRENCY"])
    assert default == 10
    for function in functions(bus_template).values():
        name = python_name(function)
        skipped = {skip["id"] for skip in function["Metadata"]["checkov"]["skip"]}
        if name in FAN_OUT:
            assert function["Properties"]["ReservedConcurrentExecutions"] == default, name
            assert "CKV_AWS_115" not in skipped, name
        else:
            assert "ReservedConcurrentExecutions" not in function["Properties"], name
            assert "CKV_AWS_115" in skipped, name


def test_reserved_concurrency_zero_reserves_none() -> None:
    found = package.handlers()
    merged = package.merge_template(STAGE, found, {"PREPOST_RESERVED_CONCURRENCY": "0"})
    for handler in found:
        function = merged["Resources"][handler.logical_id]
        assert "ReservedConcurrentExecutions" not in function["Properties"]
        assert "CKV_AWS_115" in {skip["id"] for skip in function["Metadata"]["checkov"]["skip"]}
    merged = package.merge_template(STAGE, found, {"PREPOST_RESERVED_CONCURRENCY": "25"})
    assert merged["Resources"]["RunScripts"]["Properties"]["ReservedConcurrentExecutions"] == 25
    with pytest.raises(package.PackageError, match="PREPOST_RESERVED_CONCURRENCY"):
        package.merge_template(STAGE, found, {"PREPOST_RESERVED_CONCURRENCY": "ten"})


def test_every_function_has_its_log_group_and_a_short_timeout(template: dict[str, Any]) -> None:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    groups = {
        r["Properties"]["LogGroupName"]: (logical_id, r)
        for logical_id, r in of_type(template, "AWS::Logs::LogGroup").items()
    }
    assert template["Parameters"]["LogRetentionInDays"]["Default"] == 30
    for function in functions(template).values():
        name = python_name(function)
        properties = function["Properties"]
        function_name = properties["FunctionName"]
        assert function_name == policies.stage_values(STAGE, name)["FunctionName"]
        logical_id, group = groups[f"/aws/lambda/{function_name}"]
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionInDays"}
        assert logical_id in function["DependsOn"]  # there before the function can log
        assert properties["Timeout"] < 300, name
        assert properties["Timeout"] == config["lambda_functions"][name]["lambda_timeout"]
        assert properties["MemorySize"] == config["lambda_functions"][name]["lambda_memory_size"]


def test_alarms_watch_metrics_the_code_emits(template: dict[str, Any]) -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "chalicelib").rglob("*.py"))
    alarms = of_type(template, "AWS::CloudWatch::Alarm")
    metrics = set()
    for alarm in alarms.values():
        properties = alarm["Properties"]
        assert properties["AlarmActions"] == {
            "Fn::If": [
                "HasNotificationEmail",
                [{"Ref": "NotificationTopic"}],
                {"Ref": "AWS::NoValue"},
            ]
        }
        if properties["Namespace"] == "AWS/SQS":
            assert properties["MetricName"] == "ApproximateNumberOfMessagesVisible"
            assert properties["Threshold"] == 0
            assert properties["ComparisonOperator"] == "GreaterThanThreshold"
            continue
        assert properties["Namespace"] == "PrePostBackup"
        assert properties["Dimensions"] == [{"Name": "service", "Value": "prepost-backup"}]
        metric = properties["MetricName"]
        metrics.add(metric)
        if metric.startswith("RUN_"):
            assert RunStatus(metric.removeprefix("RUN_"))
            assert 'observability.count(f"RUN_{status}")' in source
        else:
            assert f'observability.count("{metric}")' in source, metric
    assert {"RUN_FAILED", "RUN_TIMED_OUT", "InstancesStuckStopped"} <= metrics
    assert "DeadLetterQueueAlarm" in alarms


def test_notification_topic_is_optional_and_encrypted(template: dict[str, Any]) -> None:
    assert template["Parameters"]["NotificationEmail"]["Default"] == ""
    resources = template["Resources"]
    topic = resources["NotificationTopic"]
    assert topic["Condition"] == "HasNotificationEmail"
    assert topic["Properties"]["KmsMasterKeyId"] == {"Ref": "NotificationKey"}
    key = resources["NotificationKey"]
    assert key["Condition"] == "HasNotificationEmail"
    assert key["Properties"]["EnableKeyRotation"] is True
    services = [s["Principal"].get("Service") for s in key["Properties"]["KeyPolicy"]["Statement"]]
    assert "cloudwatch.amazonaws.com" in services  # else alarms could not publish


def test_zip_is_small_and_leaves_the_sdk_to_the_runtime(packaged: package.Package) -> None:
    assert packaged.zip.stat().st_size < package.ZIP_LIMIT_BYTES
    assert package.bundled_sdk(packaged.zip) == []
    with zipfile.ZipFile(packaged.zip) as archive:
        names = archive.namelist()
    assert "app.py" in names
    assert any(n.startswith("chalicelib/") for n in names)
    assert not any(n.startswith(("prepost/", "tests/")) for n in names)  # operator tooling


def test_a_stage_without_backup_roles_is_refused(tmp_path: Path) -> None:
    assert stage_environment("prod")["PREPOST_ALLOWED_BACKUP_ROLES"] == ""
    with pytest.raises(package.PackageError, match="PREPOST_ALLOWED_BACKUP_ROLES"):
        package.render_policies("prod", policies.functions())
    line = refusal("prod", tmp_path)
    assert "PREPOST_ALLOWED_BACKUP_ROLES" in line
    assert "stages.prod.environment_variables" in line


def test_a_dedicated_bus_without_start_principals_is_refused(tmp_path: Path) -> None:
    assert stage_environment(STAGE)["PREPOST_START_PRINCIPALS"] == ""
    dedicated = {"PREPOST_EVENT_BUS_NAME": BUS}
    with pytest.raises(package.PackageError, match="PREPOST_START_PRINCIPALS is empty"):
        package.package(STAGE, tmp_path, dedicated, for_checks=True)
    assert not (tmp_path / "sam.json").exists()
    with pytest.raises(package.PackageError, match="not an IAM role or user ARN: alice"):
        package.package(
            STAGE, tmp_path, dedicated | {"PREPOST_START_PRINCIPALS": "alice"}, for_checks=True
        )
    line = refusal(STAGE, tmp_path, "--for-checks", "--set", f"PREPOST_EVENT_BUS_NAME={BUS}")
    assert f"stages.{STAGE}.environment_variables.PREPOST_START_PRINCIPALS" in line


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(package.PackageError, match="unknown stage 'nope'"):
        package.render_policies("nope", ["start_run_handler"])


def test_functions_run_on_the_declared_runtime_which_runs_the_tests(
    template: dict[str, Any],
) -> None:
    assert {f["Properties"]["Runtime"] for f in functions(template).values()} == {"python3.13"}
    assert package.LAMBDA_RUNTIME == "python3.13"
    # Tests and local mode run on the functions' runtime; so did `chalice package`.
    assert package.runtime_of(sys.version_info[:2]) == package.LAMBDA_RUNTIME


def test_another_interpreter_is_refused() -> None:
    package.check_runtime((3, 13, 0))
    with pytest.raises(package.PackageError, match=r"this is python3\.11, but the functions"):
        package.check_runtime((3, 11, 7))


def refusal(stage: str, out: Path, *options: str) -> str:
    """What `python -m prepost.package` says when it refuses `stage`: one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "prepost.package", "--stage", stage, "--out", str(out), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert not (out / "sam.json").exists()
    return line


def test_dev_as_shipped_is_refused_until_its_placeholders_are_filled(tmp_path: Path) -> None:
    env = stage_environment("dev")
    placeholders = [
        "PREPOST_ALLOWED_BACKUP_ROLES",
        "PREPOST_ALLOWED_BACKUP_VAULTS",
        "PREPOST_ALLOWED_OUTPUT_BUCKETS",
        "PREPOST_ALLOWED_SCRIPT_SOURCES",
    ]
    assert all(package.PLACEHOLDER.search(env[key]) for key in placeholders)
    line = refusal("dev", tmp_path)
    for key in placeholders:
        assert f"stages.dev.environment_variables.{key}" in line
    assert "123456789012" not in json.dumps(env)  # no one else's account to allow-list
    assert "backup-status-bucket-example" not in json.dumps(env)
    with pytest.raises(package.PackageError, match="placeholders"):
        package.check_stage("dev")


def test_the_local_stage_is_packaged_for_the_checks_only(tmp_path: Path) -> None:
    line = refusal(LOCAL_STAGE, tmp_path)
    assert "never deployed" in line
    package.check_stage(LOCAL_STAGE, for_checks=True)
    assert not any(package.PLACEHOLDER.search(v) for v in stage_environment(LOCAL_STAGE).values())


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("PREPOST_ALLOWED_SCRIPT_SOURCES", "s3://bucket/../etc/", "must not contain the dot"),
        ("PREPOST_ALLOWED_SCRIPT_SOURCES", "https://example.com/scripts/", "not an Amazon S3"),
        ("PREPOST_MAX_INSTANCES_PER_RUN", "lots", "numeric setting"),
        ("PREPOST_MAX_INSTANCES_PER_RUN", "0", "max_instances_per_run"),
    ],
)
def test_a_setting_the_functions_would_misread_is_refused(
    tmp_path: Path, setting: str, value: str, said: str
) -> None:
    with pytest.raises(package.PackageError, match=said):
        package.package(STAGE, tmp_path, {setting: value}, for_checks=True)
    assert not (tmp_path / "sam.json").exists()


@pytest.mark.parametrize("skipped", [False, True])
def test_the_cold_import_is_measured_unless_told_it_was_already(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    skipped: bool,
) -> None:  # fmt: skip
    archive = tmp_path / "deployment.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr("app.py", "")
    made = SimpleNamespace(template=tmp_path / "sam.json", zip=archive)
    measured: list[int] = []

    def measure() -> dict[str, float]:
        measured.append(1)
        return {"app": 0.3, "boto3": 0.2}

    monkeypatch.setattr(package, "package", lambda *args: made)
    monkeypatch.setattr(package, "cold_import_seconds", measure)
    options = ["--no-import-check"] * skipped
    assert package.main(["--stage", "prod", "--out", str(tmp_path), *options]) == 0
    printed = capsys.readouterr().out
    assert ("cold import: app 0.300 s, boto3 0.200 s" in printed) is not skipped
    assert measured == ([] if skipped else [1])
