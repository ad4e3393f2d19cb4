"""prepost status (per-instance table and phase timeline, or JSON) and prepost runs filters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from chalicelib.clock import iso
from chalicelib.models.state import RunRecord, RunStatus
from prepost.cli import app
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input

runner = CliRunner()
PHASES = ["PRE_SCRIPT", "STOP", "BACKUP", "START", "POST_SCRIPT"]


RELEASED = "BACKUP (released at capture)"


def test_status_shows_instances_and_a_timeline_of_the_phases(
    cloud: LocalCloud, behaviour: Behaviour
) -> None:
    db = cloud.launch(2, tags={"backup-job": "true", "cluster": "db"})
    web = cloud.launch(1, tags={"backup-job": "true", "cluster": "web"})
    behaviour.backup_state[db[0]] = "FAILED"
    run_id = cloud.run(seed_input() | {"GroupBy": "tag:cluster"})
    table = ["--table", cloud.table_name]

    report = json.loads(runner.invoke(app, ["status", run_id, "--json", *table]).output)
    assert report["status"] == "COMPLETED_WITH_ERRORS"
    assert report["profile"] is None
    assert {i["instance_id"] for i in report["instances"]} == {*db, *web}
    assert all(list(i["phases"]) == PHASES for i in report["instances"])
    timeline = report["timeline"]
    # BACKUP's milestone follows it: the group released at its members' capture.
    shown_phases = [*PHASES[:3], RELEASED, *PHASES[3:]]
    assert [(row["group"], row["phase"]) for row in timeline] == [
        (group, phase) for group in ("cluster=db", "cluster=web") for phase in shown_phases
    ]
    rows = {(row["group"], row["phase"]): row for row in timeline}
    assert rows[("cluster=db", "BACKUP")]["counts"] == {"FAILED": 1, "SUCCEEDED": 1}
    assert rows[("cluster=web", "BACKUP")]["counts"] == {"SUCCEEDED": 1}
    assert rows[("cluster=db", RELEASED)]["counts"] == {"CAPTURED": 2}
    assert rows[("cluster=db", "BACKUP")]["duration_seconds"] == 7200  # the simulated backup
    for group in ("cluster=db", "cluster=web"):
        # The phases a group goes through one after another: BACKUP counts until release.
        sequence = [RELEASED if phase == "BACKUP" else phase for phase in PHASES]
        ends = [rows[(group, phase)]["ended_at"] for phase in sequence]
        starts = [rows[(group, phase)]["started_at"] for phase in sequence]
        assert all(ends)
        assert all(starts)
        assert starts == sorted(starts)  # phases follow one another in a group
        assert all(start >= end for start, end in zip(starts[1:], ends, strict=False))
    assert report["created_at"] <= timeline[0]["started_at"]

    shown = runner.invoke(app, ["status", run_id, *table])
    assert shown.exit_code == 0, shown.output
    assert "run status: COMPLETED_WITH_ERRORS" in shown.output
    assert db[0] in shown.output  # the instance table
    assert "phases" in shown.output
    backup_rows = [line for line in shown.output.splitlines() if "BACKUP" in line]
    assert any("cluster=db" in line and "2:00:00" in line and "FAILED 1" in line
               for line in backup_rows)  # fmt: skip


def test_the_timeline_of_a_running_run_has_open_phases(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    event = cloud.start_event(seed_input())
    cloud.publish(event)
    while not any(call[1] == "StartBackupJob" for call in cloud.calls):
        assert cloud.step(1) == 1
    run_id = next(e["detail"]["run_id"] for e in cloud.emitted)

    report = json.loads(
        runner.invoke(app, ["status", run_id, "--json", "--table", cloud.table_name]).output
    )
    assert report["status"] == "RUNNING"
    rows = {row["phase"]: row for row in report["timeline"]}
    assert rows["STOP"]["ended_at"] is not None
    assert rows["BACKUP"]["started_at"] is not None
    assert rows["BACKUP"]["ended_at"] is None
    assert rows["BACKUP"]["counts"] == {"IN_PROGRESS": 2}
    assert rows["POST_SCRIPT"] == {"group": "run", "phase": "POST_SCRIPT", "started_at": None,
                                   "ended_at": None, "duration_seconds": None,
                                   "counts": {"PENDING": 2}}  # fmt: skip
    shown = runner.invoke(app, ["status", run_id, "--table", cloud.table_name])
    assert "(running)" in shown.output
    cloud.drain()


def put_run(
    cloud: LocalCloud, run_id: str, age: timedelta, profile: str | None, **more: object
) -> None:
    created = iso(datetime.now(UTC) - age)
    run = RunRecord.model_validate(
        {"run_id": run_id, "status": RunStatus.SUCCEEDED, "created_at": created,
         "finished_at": created, "profile": profile} | more
    )  # fmt: skip
    assert cloud.store.put_run_if_new(run, now_epoch=int(datetime.now(UTC).timestamp()))


def listed(cloud: LocalCloud, *options: str) -> set[str]:
    result = runner.invoke(app, ["runs", "--table", cloud.table_name, *options])
    assert result.exit_code == 0, result.output
    return {
        run_id for run_id in ("r-old", "r-new", "r-weekly", "r-adhoc") if run_id in result.output
    }


def test_runs_by_profile_and_age(cloud: LocalCloud) -> None:
    put_run(cloud, "r-old", timedelta(days=10), "nightly")
    put_run(cloud, "r-new", timedelta(hours=1), "nightly", status=RunStatus.COMPLETED_WITH_ERRORS,
            counts={"SUCCEEDED": 3, "FAILED": 1})  # fmt: skip
    put_run(cloud, "r-weekly", timedelta(minutes=30), "weekly")
    put_run(cloud, "r-adhoc", timedelta(hours=2), None)

    assert listed(cloud) == {"r-old", "r-new", "r-weekly", "r-adhoc"}
    assert listed(cloud, "--run-profile", "nightly") == {"r-old", "r-new"}
    assert listed(cloud, "--run-profile", "nightly", "--since", "7d") == {"r-new"}
    assert listed(cloud, "--since", "3h") == {"r-new", "r-weekly", "r-adhoc"}
    assert listed(cloud, "--since", "90m") == {"r-new", "r-weekly"}
    assert listed(cloud, "--run-profile", "nobody") == set()

    shown = runner.invoke(app, ["runs", "--table", cloud.table_name, "--run-profile", "nightly",
                                "--since", "1d"])  # fmt: skip
    assert "of profile nightly created since" in shown.output
    assert "COMPLETED_WITH_ERRORS" in shown.output
    assert "FAILED 1, SUCCEEDED 3" in shown.output


@pytest.mark.parametrize("since", ["7w", "abc", "0d", "-1d", "7", "d7", "1.5h"])
def test_an_age_that_is_not_one_is_refused_plainly(cloud: LocalCloud, since: str) -> None:
    result = runner.invoke(app, ["runs", "--table", cloud.table_name, "--since", since])
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert f"Invalid value for '--since': '{since}' is not an age" in said
    assert "e.g. 7d, 12h or 30m" in said


def test_runs_never_cuts_a_run_id_off_a_terminal(cloud: LocalCloud) -> None:
    """Piped (not a terminal), the table is as wide as its rows: ids come out whole."""
    long_ids = [f"20261205T0{n}0000Z-{'ab' * 20}{n}" for n in range(3)]
    for run_id in long_ids:
        put_run(cloud, run_id, timedelta(hours=1), "a-profile-name-that-is-long-too")
    result = runner.invoke(app, ["runs", "--table", cloud.table_name])
    assert result.exit_code == 0, result.output
    for run_id in long_ids:
        assert run_id in result.stdout
    assert "…" not in result.stdout
    as_json = runner.invoke(app, ["runs", "--table", cloud.table_name, "--output", "json"])
    assert {run["run_id"] for run in json.loads(as_json.stdout)} == set(long_ids)
