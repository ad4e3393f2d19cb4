"""`prepost.template_check` on small transformed templates: it must see a rule on the wrong
bus. (`make template-checks` runs it on the real templates after the SAM transform.)"""

from __future__ import annotations

import copy
from typing import Any

from prepost.template_check import problems

DLQ = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
SUB = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/"


def rule(name: str, source: str, bus: Any = None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "Name": name,
        "EventPattern": {"source": [source]},
        "Targets": [
            {
                "Id": "t",
                "RetryPolicy": {"MaximumRetryAttempts": 4, "MaximumEventAgeInSeconds": 3600},
                "DeadLetterConfig": {"Arn": DLQ},
            }
        ],
    }
    if bus is not None:
        properties["EventBusName"] = bus
    return {"Type": "AWS::Events::Rule", "Properties": properties}


def transformed(dedicated_bus: bool) -> dict[str, Any]:
    """Two functions: one on the app's events, one on EC2's, as the transform leaves them."""
    on_bus = {"Ref": "EventBus"} if dedicated_bus else None
    prefix = "start-bus/" if dedicated_bus else ""
    resources: dict[str, Any] = {
        "StartRun": {"Type": "AWS::Lambda::Function", "Properties": {}},
        "StateChanged": {"Type": "AWS::Lambda::Function", "Properties": {}},
        "StartRunRule": rule("start", "prepost-backup", on_bus),
        "StateChangedRule": rule("state", "aws.ec2"),
        "DeadLetterQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "PolicyDocument": {
                    "Statement": [
                        {
                            "Effect": "Deny",
                            "Principal": "*",
                            "Action": "sqs:*",
                            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                        },
                        {
                            "Effect": "Allow",
                            "Condition": {
                                "ArnEquals": {
                                    "aws:SourceArn": [
                                        {"Fn::Sub": f"{SUB}{prefix}start"},
                                        {"Fn::Sub": f"{SUB}state"},
                                    ]
                                }
                            },
                        },
                    ]
                }
            },
        },
    }
    for function in ("StartRun", "StateChanged"):
        resources[f"{function}InvokeConfig"] = {
            "Type": "AWS::Lambda::EventInvokeConfig",
            "Properties": {
                "FunctionName": {"Ref": function},
                "DestinationConfig": {"OnFailure": {"Destination": DLQ}},
            },
        }
    if dedicated_bus:
        resources["EventBus"] = {
            "Type": "AWS::Events::EventBus",
            "Properties": {"Name": "start-bus"},
        }
    return {"Resources": resources}


def test_rules_on_their_buses_pass() -> None:
    for dedicated_bus in (False, True):
        found, counts = problems(transformed(dedicated_bus))
        assert found == []
        assert counts["rules on the dedicated bus"] == int(dedicated_bus)


def test_an_app_rule_left_on_the_default_bus_is_found() -> None:
    template = transformed(dedicated_bus=True)
    del template["Resources"]["StartRunRule"]["Properties"]["EventBusName"]
    found, _ = problems(template)
    assert any("StartRunRule listens on default" in problem for problem in found), found


def test_an_aws_service_rule_on_the_dedicated_bus_is_found() -> None:
    template = copy.deepcopy(transformed(dedicated_bus=True))
    template["Resources"]["StateChangedRule"]["Properties"]["EventBusName"] = {"Ref": "EventBus"}
    found, _ = problems(template)
    assert any("StateChangedRule listens on" in problem for problem in found), found


def with_queue_fed_function(redrive: dict[str, Any]) -> dict[str, Any]:
    """The template plus a function fed by an SQS queue (no rule, no invoke config)."""
    template = transformed(dedicated_bus=False)
    template["Resources"] |= {
        "CheckCapture": {"Type": "AWS::Lambda::Function", "Properties": {}},
        "CaptureQueue": {"Type": "AWS::SQS::Queue", "Properties": redrive},
        "CheckCaptureMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": {"Ref": "CheckCapture"},
                "EventSourceArn": {"Fn::GetAtt": ["CaptureQueue", "Arn"]},
            },
        },
    }
    return template


def test_a_queue_fed_function_needs_no_rule_but_its_queue_must_dead_letter() -> None:
    good = {"RedrivePolicy": {"deadLetterTargetArn": DLQ, "maxReceiveCount": 5}}
    found, counts = problems(with_queue_fed_function(good))
    assert found == []
    assert counts["queue-fed functions"] == 1
    found, _ = problems(with_queue_fed_function({}))
    assert found == ["CheckCaptureMapping: its queue does not dead-letter to DeadLetterQueue"]
