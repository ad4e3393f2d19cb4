"""Cancellation at each phase: nothing forward any more, everything restored and thawed."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.models.state import Phase, PhaseStatus, RunStatus
from prepost.local.cloud import LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome, script_targets

# Virtual seconds after the start at which each phase is under way (default durations:
# scripts 30 s, stop 45 s, backup 2 h, start 40 s).
DURING = {
    Phase.PRE_SCRIPT: 10,
    Phase.STOP: 50,
    Phase.BACKUP: 3600,
    Phase.START: 7300,
    Phase.POST_SCRIPT: 7330,
}


def cancel_event(cloud: LocalCloud, run_id: str) -> dict[str, Any]:
    event = cloud.start_event({"run_id": run_id, "reason": "operator asked"})
    event["detail-type"] = "PrePostBackup Cancel Requested"
    return event


@pytest.mark.parametrize("phase", list(DURING), ids=[str(p) for p in DURING])
def test_cancel_during_each_phase_restores_power_and_thaws(cloud: LocalCloud, phase: Phase) -> None:
    ids = cloud.launch(2, tags={"backup-job": "true"})
    [stopped_before] = cloud.launch(1, tags={"backup-job": "true"}, state="stopped")
    start = cloud.start_event(seed_input())
    cloud.publish(start)
    cloud.step(3)
    run_id = next(e for e in cloud.emitted if e["detail-type"].endswith("Run Started"))["detail"][
        "run_id"
    ]
    cloud.publish(cancel_event(cloud, run_id), delay=DURING[phase] - cloud.clock.elapsed().seconds)
    cloud.drain()

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    for instance_id in ids:
        assert cloud.state_of(instance_id) == "running"  # original power state
        assert instance_id in script_targets(cloud, Phase.POST_SCRIPT)  # thawed
        assert instances[instance_id].phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED
    assert cloud.state_of(stopped_before) == "stopped"
    forward_after = {Phase.PRE_SCRIPT: ["StopInstances", "StartBackupJob"],
                     Phase.STOP: ["StartBackupJob"]}.get(phase, [])  # fmt: skip
    for operation in forward_after:
        service = "ec2" if operation == "StopInstances" else "backup"
        assert not calls(cloud, service, operation), operation
    if phase in (Phase.PRE_SCRIPT, Phase.STOP, Phase.BACKUP):
        cancelled = [i.phase(phase) for i in instances.values() if i.instance_id in ids]
        assert {r.reason for r in cancelled} == {"run cancelled"}


def test_cancelling_a_finished_run_changes_nothing(cloud: LocalCloud) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input())
    cloud.publish(cancel_event(cloud, run_id))
    cloud.drain()
    run, _ = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED


def test_a_backup_completing_after_cancellation_is_only_annotated(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    cloud.backup.unstoppable.add(instance_id)  # too far along for StopBackupJob: it completes
    cloud.publish(cloud.start_event(seed_input()))
    cloud.step(3)
    run_id = next(e for e in cloud.emitted if e["detail-type"].endswith("Run Started"))["detail"][
        "run_id"
    ]
    cloud.publish(cancel_event(cloud, run_id), delay=3600)
    cloud.drain()

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    backup = instances[instance_id].phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.FAILED
    assert backup.reason == "run cancelled"
    assert backup.late_report is not None
    assert backup.late_report.startswith("SUCCEEDED at")
