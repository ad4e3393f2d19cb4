"""Check the packaged template after the SAM transform (run in .venv-checks).

    .venv-checks/bin/python -m prepost.template_check build/checks/sam.json \
        --write build/checks/transformed.json

`sam.json` declares rules as SAM events of each function; what AWS deploys are the
`AWS::Events::Rule` and `AWS::Lambda::EventInvokeConfig` resources SAM generates from
them. This runs the SAM transform (aws-sam-translator, offline) and checks those: every
rule target retries and dead-letters, the dead-letter queue accepts every rule and no
other, and only over TLS, every function's failed async invocations reach the queue, and
every rule listens on the right bus (AWS service events: the default bus, the only one AWS
services put events on; the app's own events: the stack's dedicated bus when it has one),
and a function fed by a queue (the capture polls) has that queue dead-letter.
With `--write` it also writes the transformed template, for `cfn-lint` to lint what
CloudFormation deploys: some checks (W3037, IAM actions that do not exist) only see the
roles' policies after the transform. Only the standard library and samtranslator are
imported, so it runs outside the project's virtualenv.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

DEAD_LETTER_QUEUE = "DeadLetterQueue"
AWS_SOURCE_PREFIX = "aws."
RETRY_LIMITS = {"MaximumRetryAttempts": (0, 185), "MaximumEventAgeInSeconds": (60, 86400)}


class _NoManagedPolicies:
    """The functions have their own roles: the transform needs no AWS managed policy."""

    def load(self) -> dict[str, str]:
        return {}


def transformed(sam: dict[str, Any]) -> dict[str, Any]:
    """`sam` after the SAM transform, as CloudFormation would deploy it."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # for the partition; no call
    from samtranslator.translator.transform import transform

    sam = copy.deepcopy(sam)
    for resource in sam["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            # What `aws cloudformation package` does to the local path: an S3 location.
            resource["Properties"]["CodeUri"] = "s3://uploaded-by-cloudformation-package/zip"
    result: dict[str, Any] = transform(sam, {}, _NoManagedPolicies())
    return result


def _is_dlq_arn(value: Any) -> bool:
    return bool(value == {"Fn::GetAtt": [DEAD_LETTER_QUEUE, "Arn"]})


def problems(template: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """What is wrong with the transformed `template`, and what was counted."""
    resources = template["Resources"]
    found: list[str] = []
    by_type: dict[str, list[str]] = {}
    for logical_id, resource in resources.items():
        by_type.setdefault(resource["Type"], []).append(logical_id)
    functions = by_type.get("AWS::Lambda::Function", [])
    rules = by_type.get("AWS::Events::Rule", [])
    buses = by_type.get("AWS::Events::EventBus", [])
    if len(buses) > 1:
        found.append(f"{len(buses)} event buses: the app puts its events on one")
    rule_names = []  # as the rule's ARN ends: rule/[bus/]name
    for rule_id in rules:
        properties = resources[rule_id]["Properties"]
        bus = properties.get("EventBusName", "default")
        expected = _expected_bus(properties.get("EventPattern"), buses)
        if bus != expected:
            found.append(f"{rule_id} listens on {bus}, not {expected}")
        on_bus = ""
        if isinstance(bus, dict) and bus.get("Ref") in buses:
            on_bus = f"{resources[bus['Ref']]['Properties']['Name']}/"
        rule_names.append(f"{on_bus}{properties.get('Name')}")
        if not properties.get("Name"):
            found.append(f"{rule_id} has no fixed Name (the queue policy names each rule)")
        for target in properties.get("Targets", []):
            retry = target.get("RetryPolicy")
            if not retry:
                found.append(f"{rule_id} target {target.get('Id')} has no RetryPolicy")
            else:
                for key, (low, high) in RETRY_LIMITS.items():
                    if not low <= retry.get(key, -1) <= high:
                        found.append(f"{rule_id} RetryPolicy.{key} not in [{low}, {high}]")
            if not _is_dlq_arn(target.get("DeadLetterConfig", {}).get("Arn")):
                found.append(f"{rule_id} target {target.get('Id')} has no DeadLetterConfig")
    policy_ids = by_type.get("AWS::SQS::QueuePolicy", [])
    allowed: list[str] = []
    tls_only = False
    for policy_id in policy_ids:
        for statement in resources[policy_id]["Properties"]["PolicyDocument"]["Statement"]:
            condition = statement.get("Condition", {})
            if statement["Effect"] == "Deny":
                insecure = condition.get("Bool", {}).get("aws:SecureTransport")
                tls_only |= statement.get("Principal") == "*" and insecure == "false"
                continue
            arns = condition.get("ArnEquals", {}).get("aws:SourceArn", [])
            allowed += [arn["Fn::Sub"].rsplit("rule/", 1)[-1] for arn in arns]
    if policy_ids and not tls_only:
        found.append("the queue policy does not deny requests without TLS")
    if sorted(allowed) != sorted(name for name in rule_names if name):
        found.append(f"the queue policy allows rules {sorted(allowed)}, not {sorted(rule_names)}")
    configs = by_type.get("AWS::Lambda::EventInvokeConfig", [])
    configured = set()
    for config_id in configs:
        properties = resources[config_id]["Properties"]
        configured.add(properties["FunctionName"].get("Ref"))
        on_failure = properties.get("DestinationConfig", {}).get("OnFailure", {})
        if not _is_dlq_arn(on_failure.get("Destination")):
            found.append(f"{config_id} does not send failures to the dead-letter queue")
    # A function fed by a queue (the capture polls) is invoked synchronously by its event
    # source mapping: no EventInvokeConfig, no rule; its queue dead-letters instead.
    queue_fed = set()
    for mapping_id in by_type.get("AWS::Lambda::EventSourceMapping", []):
        properties = resources[mapping_id]["Properties"]
        queue_fed.add(properties["FunctionName"].get("Ref"))
        source = properties.get("EventSourceArn")
        queue_id = source.get("Fn::GetAtt", [None])[0] if isinstance(source, dict) else None
        redrive = resources.get(queue_id, {}).get("Properties", {}).get("RedrivePolicy", {})
        if not _is_dlq_arn(redrive.get("deadLetterTargetArn")):
            found.append(f"{mapping_id}: its queue does not dead-letter to {DEAD_LETTER_QUEUE}")
    for function_id in functions:
        if function_id not in configured and function_id not in queue_fed:
            found.append(f"{function_id} has no EventInvokeConfig")
    if len(rules) != len(functions) - len(queue_fed):
        found.append(f"{len(rules)} rules for {len(functions) - len(queue_fed)} functions")
    on_buses = sum("/" in name for name in rule_names)
    counts = {
        "functions": len(functions),
        "rules": len(rules),
        "rules on the dedicated bus": on_buses,
        "invoke configs": len(configs),
        "queue-fed functions": len(queue_fed),
    }
    return found, counts


def _expected_bus(pattern: Any, buses: list[str]) -> Any:
    """Where a rule with `pattern` must listen: AWS services put their events on the
    default bus only; the app's own events go to the stack's bus when it has one."""
    if pattern is None:  # a schedule
        return "default"
    sources = pattern.get("source", [])
    if sources and all(str(source).startswith(AWS_SOURCE_PREFIX) for source in sources):
        return "default"
    return {"Ref": buses[0]} if buses else "default"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prepost.template_check")
    parser.add_argument("template", type=Path, nargs="?", default=Path("build/checks/sam.json"))
    parser.add_argument("--write", type=Path, help="where to write the transformed template")
    args = parser.parse_args(argv)
    path: Path = args.template
    template = transformed(json.loads(path.read_text()))
    if args.write:
        args.write.write_text(json.dumps(template, indent=2) + "\n")
    found, counts = problems(template)
    summary = ", ".join(f"{count} {what}" for what, count in counts.items())
    if found:
        for problem in found:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    print(
        f"SAM transform of {path}: {summary}; every rule target has a RetryPolicy and the "
        "dead-letter queue (TLS only), every function sends failed invocations there, "
        "every rule listens on its bus"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
