"""At-least-once delivery: duplicates, crashes after side effects, overlapping runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from chalicelib.models.state import InstanceStatus, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome, statuses

Event = dict[str, Any]
SIDE_EFFECTS = [
    ("ssm", "SendCommand"),
    ("ec2", "StopInstances"),
    ("backup", "StartBackupJob"),
    ("ec2", "StartInstances"),
]


def side_effects(cloud: LocalCloud) -> dict[str, int]:
    return {op: len(calls(cloud, service, op)) for service, op in SIDE_EFFECTS}


def scripts_per_instance(cloud: LocalCloud) -> dict[tuple[str, str], int]:
    sent: dict[tuple[str, str], int] = {}
    for params in calls(cloud, "ssm", "SendCommand"):
        phase = params["Comment"].rsplit(" ", 1)[1]
        for instance_id in params["InstanceIds"]:
            sent[(instance_id, phase)] = sent.get((instance_id, phase), 0) + 1
    return sent


def assert_clean_success(cloud: LocalCloud, run_id: str, ids: list[str]) -> None:
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    for instance_id in ids:
        assert statuses(instances[instance_id]) == dict.fromkeys(Phase, PhaseStatus.SUCCEEDED)
        assert cloud.state_of(instance_id) == "running"
    # Exactly one side effect of each kind per instance and phase.
    assert set(scripts_per_instance(cloud).values()) == {1}
    assert len(scripts_per_instance(cloud)) == 2 * len(ids)
    backups = [p["ResourceArn"] for p in calls(cloud, "backup", "StartBackupJob")]
    assert len(set(backups)) == len(ids)
    assert len(cloud.backup.jobs) == len(ids)  # the token made any repeat the same job


KINDS: dict[str, Callable[[Event], bool]] = {
    "start event": lambda e: e["detail-type"] == "BackupSolution-PrePostScript",
    "Phase Requested": lambda e: e["detail-type"].endswith("Phase Requested"),
    "Phase Completed": lambda e: e["detail-type"].endswith("Phase Completed"),
    "SSM event": lambda e: e["source"] == "aws.ssm",
    "EC2 event": lambda e: e["source"] == "aws.ec2",
    "Backup event": lambda e: e["source"] == "aws.backup",
}


EXPECTED_SIDE_EFFECTS = {
    "SendCommand": 2,
    "StopInstances": 1,
    "StartBackupJob": 3,
    "StartInstances": 1,
}


@pytest.mark.parametrize(
    ("times", "concurrent"), [(2, False), (5, False), (5, True)], ids=["x2", "x5", "x5-threads"]
)
@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_duplicates_cause_exactly_one_side_effect(
    behaviour: Behaviour,
    cloud: LocalCloud,
    kind: Callable[[Event], bool],
    times: int,
    concurrent: bool,
) -> None:
    ids = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.copies = lambda event: times if kind(event) else 1
    behaviour.concurrent_copies = concurrent  # copies at the same moment, from threads
    run_id = cloud.run(seed_input())

    assert_clean_success(cloud, run_id, ids)
    assert side_effects(cloud) == EXPECTED_SIDE_EFFECTS
    completed = [e for e in cloud.emitted if e["detail-type"].endswith("Run Completed")]
    assert len(completed) == 1


@pytest.mark.parametrize(
    "operation",
    ["DescribeInstances", "SendCommand", "StopInstances", "StartBackupJob", "StartInstances",
     "PutEvents", "TransactWriteItems"],
)  # fmt: skip
def test_a_crash_right_after_a_side_effect_repeats_nothing(
    behaviour: Behaviour, cloud: LocalCloud, operation: str
) -> None:
    ids = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.crash_after[operation] = 1
    run_id = cloud.run(seed_input())

    assert any(f"crash after {operation}" in what for _, what in cloud.timeline)
    assert_clean_success(cloud, run_id, ids)


def test_overlapping_runs_share_no_instance(cloud: LocalCloud) -> None:
    shared = cloud.launch(2, tags={"backup-job": "true", "team": "a"})
    only_second = cloud.launch(1, tags={"team": "a"})
    first = cloud.start_event(seed_input())
    by_team = seed_input() | {"TargetEC2TagKey": "team", "TargetEC2TagValue": "a"}
    second = cloud.start_event(by_team)
    cloud.publish(first)
    cloud.publish(second, delay=120)  # while the first one runs
    cloud.drain()

    runs = sorted(
        (e["detail"] for e in cloud.emitted if e["detail-type"].endswith("Run Completed")),
        key=lambda d: d["created_at"],
    )
    assert [r["status"] for r in runs] == ["SUCCEEDED", "COMPLETED_WITH_ERRORS"]
    _, second_instances = outcome(cloud, runs[1]["run_id"])
    for instance_id in shared:
        skipped = second_instances[instance_id]
        assert skipped.status is InstanceStatus.SKIPPED
        assert skipped.reason == f"instance is held by run {runs[0]['run_id']}"
    assert second_instances[only_second[0]].status is InstanceStatus.SUCCEEDED
    backups = [p["ResourceArn"].rsplit("/", 1)[1] for p in calls(cloud, "backup", "StartBackupJob")]
    assert sorted(backups) == sorted([*shared, *only_second])
    assert all(cloud.store.get_lease(i) is None for i in [*shared, *only_second])


def test_throttled_backup_start_is_retried_until_it_goes_through(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    ids = cloud.launch(2, tags={"backup-job": "true"})
    cloud.backup.refuse[ids[0]] = ["LimitExceededException", "LimitExceededException"]
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert instances[ids[0]].phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    assert (
        len([p for p in calls(cloud, "backup", "StartBackupJob") if ids[0] in p["ResourceArn"]])
        == 3
    )


def test_capacity_failures_on_start_are_retried_then_reported_stuck(
    behaviour: Behaviour, cloud: LocalCloud, logs: Any
) -> None:
    stuck, fine = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.power_errors[(stuck, "StartInstances")] = "InsufficientInstanceCapacity"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert instances[stuck].status is InstanceStatus.STUCK_STOPPED
    start = instances[stuck].phase(Phase.START)
    assert start.timed_out
    assert "InsufficientInstanceCapacity" in (start.reason or "")
    attempts = [p for p in calls(cloud, "ec2", "StartInstances") if p["InstanceIds"] == [stuck]]
    assert len(attempts) >= 2  # retried before the deadline
    assert instances[fine].status is InstanceStatus.SUCCEEDED
    assert logs.records("instance left stopped")[0]["instance_id"] == stuck


def test_backup_throttled_past_its_start_window_fails_with_the_reason(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    throttled, fine = cloud.launch(2, tags={"backup-job": "true"})
    cloud.backup.refuse[throttled] = ["LimitExceededException"] * 50
    run_id = cloud.run(seed_input())  # StartWindowMinutes: 60

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    backup = instances[throttled].phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.FAILED
    assert backup.reason is not None
    assert backup.reason.startswith("no backup job could be started within the start window")
    assert "LimitExceededException" in backup.reason
    attempts = [
        p for p in calls(cloud, "backup", "StartBackupJob") if throttled in p["ResourceArn"]
    ]
    assert 4 <= len(attempts) <= 20  # retried with backoff (0, 5, 15, 35 min) for an hour
    assert instances[throttled].phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED
    assert instances[fine].status is InstanceStatus.SUCCEEDED


def test_a_command_refused_for_one_instance_fails_that_instance_only(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    bad, *good = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.send_command_errors[bad] = "InvalidInstanceId"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert "InvalidInstanceId" in (instances[bad].phase(Phase.PRE_SCRIPT).reason or "")
    for instance_id in good:
        assert instances[instance_id].status is InstanceStatus.SUCCEEDED


def test_the_lease_of_a_lost_run_expires(cloud: LocalCloud) -> None:
    from chalicelib.models.state import Lease

    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    now = int(cloud.clock.now().timestamp())
    lost = Lease(instance_id=instance_id, run_id="lost-run", group_id="run", expires_at=now + 60)
    assert cloud.store.acquire_lease(lost, now) is None
    taken = Lease(instance_id=instance_id, run_id="other", group_id="run", expires_at=now + 600)
    assert cloud.store.acquire_lease(taken, now).run_id == "lost-run"  # still held

    cloud.publish(cloud.start_event(seed_input()), delay=120)  # after the lease ran out
    cloud.drain()
    [completed] = [
        e["detail"] for e in cloud.emitted if e["detail-type"] == "PrePostBackup Run Completed"
    ]
    assert completed["status"] == "SUCCEEDED"
