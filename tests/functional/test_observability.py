"""Logs a machine can read, with the run id as correlation id; metrics per phase outcome."""

from __future__ import annotations

import json

import pytest

from prepost.local.cloud import Behaviour, LocalCloud
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
