"""Cancelled (or timed out) during BACKUP: the job is stopped, the lease kept until the job
is terminal, and what a job produces after its phase ended is relabelled crash-consistent."""

from __future__ import annotations

from typing import Any

from chalicelib.logic.decisions import run_id_for
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import InstanceStatus, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome
from tests.functional.test_cancel import cancel_event

DURING_BACKUP = 3600  # virtual seconds after the start (the backup takes 2 h)


def _start(cloud: LocalCloud) -> tuple[dict[str, Any], str]:
    event = cloud.start_event(seed_input())
    return event, run_id_for(event["id"], AwsEvent.model_validate(event).time)


def _cancel_during_backup(cloud: LocalCloud) -> str:
    event, run_id = _start(cloud)
    cloud.publish(event)
    cloud.publish(cancel_event(cloud, run_id), delay=DURING_BACKUP)
    return run_id


def _step_until(cloud: LocalCloud, run_id: str, done: Any) -> None:
    while not done(cloud.store.get_run(run_id)):
        assert cloud.step(1) == 1, "nothing left to deliver"


def _finished(run: Any) -> bool:
    return run is not None and run.status not in (RunStatus.STARTING, RunStatus.RUNNING)


def _job(cloud: LocalCloud, instance_id: str) -> dict[str, Any]:
    [job] = [j for j in cloud.backup.jobs.values() if j["ResourceArn"].endswith(instance_id)]
    return job


def test_cancel_during_backup_stops_the_job_and_it_ends_aborted(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    run_id = _cancel_during_backup(cloud)
    cloud.drain()

    run, instances = outcome(cloud, run_id)
    job = _job(cloud, instance_id)
    assert run.status is RunStatus.CANCELLED
    assert [p["BackupJobId"] for p in calls(cloud, "backup", "StopBackupJob")] == [
        job["BackupJobId"]
    ]
    assert job["State"] == "ABORTED"
    backup = instances[instance_id].phase(Phase.BACKUP)
    assert (backup.status, backup.reason, backup.job_state) == (
        PhaseStatus.FAILED, "run cancelled", "ABORTED",
    )  # fmt: skip
    assert instances[instance_id].phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED
    assert cloud.store.get_lease(instance_id) is None  # released once the job was ABORTED


def test_the_lease_is_kept_until_the_stopped_job_is_terminal(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    cloud.backup.abort_seconds = 3600  # aborting outlasts the run's compensation
    first = _cancel_during_backup(cloud)
    _step_until(cloud, first, _finished)
    job = _job(cloud, instance_id)
    assert job["State"] == "ABORTING"
    lease = cloud.store.get_lease(instance_id)
    assert lease is not None
    assert lease.backup_job_id == job["BackupJobId"]

    event, second = _start(cloud)
    cloud.publish(event)
    _step_until(cloud, second, lambda run: run is not None and run.status is not RunStatus.STARTING)
    skipped = cloud.store.list_instances(second)[0]
    assert skipped.status is InstanceStatus.SKIPPED
    assert skipped.reason == (
        f"instance is held by run {first} until its backup job {job['BackupJobId']} ends"
    )

    cloud.drain()  # the job is ABORTED: its event gives the lease back
    assert cloud.store.get_lease(instance_id) is None
    third = cloud.run(seed_input())
    _, instances = outcome(cloud, third)
    assert instances[instance_id].status is InstanceStatus.SUCCEEDED


def test_a_job_completing_after_cancel_is_relabelled_crash_consistent(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    cloud.backup.unstoppable.add(instance_id)  # StopBackupJob is refused: the job completes
    run_id = _cancel_during_backup(cloud)
    cloud.drain()

    run, instances = outcome(cloud, run_id)
    job = _job(cloud, instance_id)
    assert run.status is RunStatus.CANCELLED
    assert job["State"] == "COMPLETED"
    assert job["RecoveryPointTags"]["prepost:consistency"] == "app-consistent"  # as started
    tags = cloud.backup.recovery_point_tags(job["RecoveryPointArn"])
    assert tags["prepost:consistency"] == "crash-consistent"
    assert tags["prepost:run-id"] == run_id
    backup = instances[instance_id].phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.FAILED  # label only: the result stays
    assert backup.consistency == "crash-consistent"
    assert backup.recovery_point_arn == job["RecoveryPointArn"]
    assert backup.late_report is not None
    assert backup.late_report.endswith("recovery point relabelled crash-consistent")
    assert cloud.store.get_lease(instance_id) is None


def test_a_backup_that_timed_out_then_completed_is_relabelled(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.backup_seconds = 4 * 3600  # past the phase's deadline
    detail = seed_input()
    detail["BackupDetails"]["CompleteWindowMinutes"] = 180
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    job = _job(cloud, instance_id)
    assert run.status is RunStatus.TIMED_OUT
    assert job["State"] == "COMPLETED"
    tags = cloud.backup.recovery_point_tags(job["RecoveryPointArn"])
    assert tags["prepost:consistency"] == "crash-consistent"
    backup = instances[instance_id].phase(Phase.BACKUP)
    assert backup.timed_out
    assert backup.status is PhaseStatus.FAILED
    assert backup.consistency == "crash-consistent"
    assert cloud.store.get_lease(instance_id) is None  # kept until the job ended, then given back


def test_a_lost_terminal_event_is_made_up_for_by_the_next_run(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    cloud.backup.unstoppable.add(instance_id)
    behaviour.lose_event = lambda event: event["source"] == "aws.backup"
    first = _cancel_during_backup(cloud)
    cloud.drain()
    job = _job(cloud, instance_id)
    assert job["State"] == "COMPLETED"
    lease = cloud.store.get_lease(instance_id)
    assert lease is not None
    assert lease.run_id == first

    second = cloud.run(seed_input())

    _, instances = outcome(cloud, second)
    assert instances[instance_id].status is InstanceStatus.SUCCEEDED  # it took the lease
    tags = cloud.backup.recovery_point_tags(job["RecoveryPointArn"])
    assert tags["prepost:consistency"] == "crash-consistent"  # the first run's late backup
    _, earlier = outcome(cloud, first)
    assert earlier[instance_id].phase(Phase.BACKUP).job_state == "COMPLETED"


def test_a_job_whose_id_was_never_recorded_is_found_and_stopped(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.crash_after["StartBackupJob"] = 1  # the handler dies before recording the job
    event, run_id = _start(cloud)
    cloud.publish(event)
    while not calls(cloud, "backup", "StartBackupJob"):
        assert cloud.step(1) == 1
    cloud.publish(cancel_event(cloud, run_id), delay=5)  # before Lambda retries the handler
    cloud.drain()

    run, instances = outcome(cloud, run_id)
    job = _job(cloud, instance_id)
    assert run.status is RunStatus.CANCELLED
    assert calls(cloud, "backup", "ListBackupJobs")
    assert [p["BackupJobId"] for p in calls(cloud, "backup", "StopBackupJob")] == [
        job["BackupJobId"]
    ]
    assert job["State"] == "ABORTED"
    backup = instances[instance_id].phase(Phase.BACKUP)
    assert backup.backup_job_id == job["BackupJobId"]
    assert backup.job_state == "ABORTED"
    assert cloud.store.get_lease(instance_id) is None
