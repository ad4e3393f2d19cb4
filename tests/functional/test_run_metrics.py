"""The metrics a finished run emits for the dashboard: its instances by outcome and the
duration of each of its phases, once, with the run's own outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.clock import parse_iso
from chalicelib.models.state import Phase
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input


def emf_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if '"_aws"' in line]


def values(lines: list[dict[str, Any]], metric: str) -> list[float]:
    return [value for line in lines if metric in line for value in line[metric]]


def test_a_finished_run_counts_its_instances_by_outcome(
    behaviour: Behaviour, cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, *_ = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = "FAILED"
    capsys.readouterr()
    run_id = cloud.run(seed_input())

    lines = emf_lines(capsys.readouterr().out)
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.counts == {"SUCCEEDED": 2, "FAILED": 1}
    assert values(lines, "INSTANCE_SUCCEEDED") == [2.0]
    assert values(lines, "INSTANCE_FAILED") == [1.0]
    assert values(lines, "INSTANCE_SKIPPED") == []  # no zero values for outcomes none had
    [emf] = [line for line in lines if "INSTANCE_SUCCEEDED" in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "PrePostBackup"
    assert directive["Dimensions"] == [["service"]]
    assert emf["service"] == "prepost-backup"
    assert {"Name": "INSTANCE_SUCCEEDED", "Unit": "Count"} in directive["Metrics"]
    assert "RUN_COMPLETED_WITH_ERRORS" in emf  # in the same flush as the run's outcome


def test_a_finished_run_records_each_phase_from_first_start_to_last_end(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    capsys.readouterr()
    run_id = cloud.run(seed_input())

    lines = emf_lines(capsys.readouterr().out)
    instances = cloud.store.list_instances(run_id)
    for phase in Phase:
        results = [i.phases[phase] for i in instances if phase in i.phases]
        starts = [parse_iso(r.started_at) for r in results if r.started_at]
        ends = [parse_iso(r.ended_at) for r in results if r.ended_at]
        expected = (max(ends) - min(starts)).total_seconds()
        assert values(lines, f"{phase}_DURATION_SECONDS") == [expected], phase
    # The seed example's backup phase runs for virtual hours: a duration, not a count.
    [backup] = values(lines, "BACKUP_DURATION_SECONDS")
    assert backup > 3600
    [emf] = [line for line in lines if "BACKUP_DURATION_SECONDS" in line]
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert {"Name": "BACKUP_DURATION_SECONDS", "Unit": "Seconds"} in directive["Metrics"]
