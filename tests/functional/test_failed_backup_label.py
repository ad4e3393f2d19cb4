"""A backup that did not succeed made no recovery point: neither its record nor the run's
report gives it a consistency label (the label its job was started with, and tagged with,
described a recovery point that never came)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.models.state import Consistency, Phase, PhaseResult, PhaseStatus
from prepost.local.cloud import Behaviour, LocalCloud
from prepost.local.scenario import Scenario
from prepost.local.simulate import simulate
from prepost.report import phase_entry
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome


@pytest.mark.parametrize("scenario", ["backup-fails", "capture-snapshot-fails"])
def test_the_report_of_a_failed_backup_has_no_consistency_label(scenario: str) -> None:
    # capture-snapshot-fails: the member was released at capture before its job failed.
    report = simulate(Scenario.load(scenario)).report

    backups = [instance["phases"]["BACKUP"] for instance in report["instances"]]
    failed = [backup for backup in backups if backup["status"] != "SUCCEEDED"]
    succeeded = [backup for backup in backups if backup["status"] == "SUCCEEDED"]
    assert failed
    assert succeeded
    assert [backup["consistency"] for backup in failed] == [None] * len(failed)
    assert {backup["consistency"] for backup in succeeded} == {"app-consistent"}


@pytest.mark.parametrize("job_state", ["FAILED", "ABORTED", "EXPIRED"])
def test_a_failed_backups_record_loses_the_label_its_job_started_with(
    behaviour: Behaviour, cloud: LocalCloud, job_state: str
) -> None:
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = job_state
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    failed = instances[bad].phase(Phase.BACKUP)
    assert failed.status is PhaseStatus.FAILED
    assert failed.consistency is None
    assert failed.recovery_point_arn is None
    assert instances[good].phase(Phase.BACKUP).consistency is Consistency.APP
    tags = {
        request["ResourceArn"].rsplit("/", 1)[1]: request["RecoveryPointTags"]
        for request in calls(cloud, "backup", "StartBackupJob")
    }
    assert tags[bad]["prepost:consistency"] == "app-consistent"  # as its job was started


def test_a_backup_that_timed_out_without_a_recovery_point_has_no_label(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.backup_state[instance_id] = "RUNNING"  # never terminal
    detail = seed_input()
    detail["BackupDetails"]["CompleteWindowMinutes"] = 180
    run_id = cloud.run(detail)

    _, instances = outcome(cloud, run_id)
    backup = instances[instance_id].phase(Phase.BACKUP)
    assert backup.timed_out
    assert backup.status is PhaseStatus.FAILED
    assert backup.consistency is None


RECOVERY_POINT = "arn:aws:ec2:us-east-1::image/ami-0123456789abcdef0"
LATE = {"consistency": Consistency.CRASH, "recovery_point_arn": RECOVERY_POINT}


@pytest.mark.parametrize(
    ("status", "fields", "shown"),
    [
        # A record written before failed backups lost their label.
        (PhaseStatus.FAILED, {"consistency": Consistency.APP}, None),
        (PhaseStatus.SKIPPED, {}, None),
        (PhaseStatus.IN_PROGRESS, {"consistency": Consistency.APP}, None),
        (PhaseStatus.SUCCEEDED, {"consistency": Consistency.APP}, "app-consistent"),
        # Its job completed after the phase had failed (cancelled, timed out): relabelled.
        (PhaseStatus.FAILED, LATE, "crash-consistent"),
    ],
)
def test_the_report_labels_only_a_backup_with_a_recovery_point(
    status: PhaseStatus, fields: dict[str, Any], shown: str | None
) -> None:
    entry = phase_entry(Phase.BACKUP, PhaseResult(status=status, **fields))

    assert entry["consistency"] == shown
    assert entry["status"] == str(status)
