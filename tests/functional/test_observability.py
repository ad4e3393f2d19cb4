"""Logs a machine can read, with the run id as correlation id; metrics per phase outcome."""

from __future__ import annotations

import json

import pytest

from chalicelib import observability
from prepost.local.cloud import Behaviour, LocalCloud
from prepost.samples import load_event
from tests.conftest import LogLines, seed_input


def test_every_line_of_a_run_carries_its_run_id(cloud: LocalCloud, logs: LogLines) -> None:
    ids = cloud.launch(2, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input())

    records = logs.records()
    assert records
    assert {r["correlation_id"] for r in records} == {run_id}
    finished = logs.records("phase finished")
    assert {(r["instance_id"], r["phase"]) for r in finished} == {
        (i, p) for i in ids for p in ("PRE_SCRIPT", "STOP", "BACKUP", "START", "POST_SCRIPT")
    }
    assert all(r["status"] == "SUCCEEDED" for r in finished)
    [completed] = logs.records("run completed")
    assert completed["status"] == "SUCCEEDED"
    assert {r["function_name"] for r in records} >= {"start_run_handler", "finalize_group"}


def test_metrics_per_phase_outcome(
    behaviour: Behaviour, cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, _ = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = "FAILED"
    capsys.readouterr()
    cloud.run(seed_input())

    output = capsys.readouterr().out
    for metric, count in {
        "PRE_SCRIPT_SUCCEEDED": 2,
        "BACKUP_SUCCEEDED": 1,
        "BACKUP_FAILED": 1,
        "POST_SCRIPT_SUCCEEDED": 2,
        "RUN_COMPLETED_WITH_ERRORS": 1,
    }.items():
        assert output.count(f'"{metric}":[1.0]') == count, metric


def test_the_run_duration_is_a_metric_in_seconds(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    capsys.readouterr()
    run_id = cloud.run(seed_input())

    run = cloud.store.get_run(run_id)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    [emf] = [line for line in lines if "RunDurationSeconds" in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "PrePostBackup"
    assert directive["Dimensions"] == [["service"]]
    assert {"Name": "RunDurationSeconds", "Unit": "Seconds"} in directive["Metrics"]
    # 02:00:00 to 04:01:15, virtual time: the jobs' end (released at capture before).
    assert emf["RunDurationSeconds"] == [7275.0]
    assert (run.created_at, run.finished_at) == ("2026-11-26T02:00:00Z", "2026-11-26T04:01:15Z")


# The functions whose first call in a seed run logs something.
FIRST_CALL_LOGS = (
    "start_run_handler",
    "run_scripts",
    "script_invocation_changed",
    "finalize_group",
)
TRACE_ROOT = "1-5759e988-bd862e3fe1be46a994272793"  # an X-Ray trace id


def test_every_line_carries_the_lambda_context_cold_only_at_a_functions_first_call(
    cloud: LocalCloud, logs: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Lambda sets for an invocation traced by X-Ray; Powertools logs its root.
    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={TRACE_ROOT};Parent=53995c3f42cd8ad8;Sampled=1")
    observability.reset_cold_starts()  # a new deployment: every function starts cold
    cloud.launch(2, tags={"backup-job": "true"})
    cloud.run(seed_input())

    records = logs.records()
    assert records
    for record in records:
        assert {"function_request_id", "function_name", "cold_start"} <= set(record), record
        assert record["xray_trace_id"] == TRACE_ROOT
    # function name: the cold start flag of each of its invocations that logged, in order
    calls: dict[str, dict[str, bool]] = {}
    for record in records:
        flags = calls.setdefault(record["function_name"], {})
        flag = flags.setdefault(record["function_request_id"], record["cold_start"])
        assert record["cold_start"] is flag, record  # one flag per invocation
    for function_name, flags in calls.items():
        cold, *warm = flags.values()  # a first call may log nothing (a capture poll too early)
        assert not any(warm), function_name
        if function_name in FIRST_CALL_LOGS:
            assert cold, function_name
    assert len(calls["script_invocation_changed"]) > 1  # warm calls are in the test
    # The keys are the invocation's: a line written after it carries none of them.
    observability.logger().info("after the run")
    [after] = logs.records("after the run")
    assert not set(observability.LAMBDA_CONTEXT_KEYS) & set(after), after


def test_local_mode_sends_the_logs_to_stderr_and_nothing_to_stdout(
    behaviour: Behaviour,
    cloud: LocalCloud,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # EMF is printed on stdout
    bad, _ = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = "FAILED"  # a run that logs at WARNING too
    previous = observability.log_to("stdout")
    try:
        capsys.readouterr()
        observability.logger().info("before the switch")
        before = capsys.readouterr()
        observability.log_to("stderr")
        cloud.run(seed_input())
        after = capsys.readouterr()
    finally:
        observability.log_to(previous)

    assert [json.loads(line)["message"] for line in before.out.splitlines()] == [
        "before the switch"
    ]
    assert before.err == ""
    assert after.out == ""
    lines = [json.loads(line) for line in after.err.splitlines()]
    assert lines
    assert {line["service"] for line in lines} == {"prepost-backup"}
    assert {"INFO", "WARNING"} <= {line["level"] for line in lines}


def test_an_ec2_event_of_no_run_is_logged_as_unrelated(cloud: LocalCloud, logs: LogLines) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})  # in no run
    event = load_event("aws-ec2-state-stopped")
    event["detail"]["instance-id"] = instance_id
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]

    cloud.invoke("instance_state_changed", event)

    [line] = logs.records()
    assert line["message"] == "not an instance of any run"
    assert line["level"] == "INFO"
    assert (line["instance_id"], line["state"]) == (instance_id, "stopped")
    assert line["function_name"] == "instance_state_changed"
    assert cloud.dead_letters == []
