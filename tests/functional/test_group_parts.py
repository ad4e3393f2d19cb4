"""A coordination group larger than the part size runs as parts that meet at a barrier.

Each part is what one handler invocation works on (its phase's side effects, its
reconciliation, its members' final records), so no invocation grows with the group; the
barrier keeps the group's phases barriers: no member of any part is stopped or backed up
before every member of every part ended its pre-script. The stage's part size is set low
here (`PREPOST_GROUP_PART_SIZE`) so that a fleet of a few instances has several parts.
"""

from __future__ import annotations

from collections import Counter

import pytest

from chalicelib.logic.decisions import parts_of, run_id_for
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import (
    GroupPhaseState,
    InstanceStatus,
    Phase,
    PhaseStatus,
    RunStatus,
)
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome

FLEET = 7
PART_SIZE = 3  # parts of 3, 3 and 1


def _start(cloud: LocalCloud, **changes: object) -> tuple[str, list[str]]:
    cloud.configure_stage(PREPOST_GROUP_PART_SIZE=str(PART_SIZE))
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    event = cloud.start_event(seed_input() | changes)
    cloud.publish(event)
    return run_id_for(event["id"], AwsEvent.model_validate(event).time), ids


def _first_call(cloud: LocalCloud, operation: str) -> int:
    """The position in the timeline of the first call of `operation`."""
    return next(n for n, (_, what) in enumerate(cloud.timeline) if what == f"call {operation}")


def test_parts_are_split_by_instance_id_and_carry_their_group_as_barrier() -> None:
    ids = [f"i-{n:02d}" for n in range(7)]
    parts = parts_of("run", "run", list(reversed(ids)), 3)
    assert [p.instance_ids for p in parts] == [tuple(ids[:3]), tuple(ids[3:6]), (ids[6],)]
    assert {p.barrier for p in parts} == {"run"}
    assert [p.group_id for p in parts] == ["run.0", "run.1", "run.2"]
    assert parts[2].label == "run (part 3 of 3)"
    whole = parts_of("run", "run", ids, 7)
    assert [(p.group_id, p.barrier) for p in whole] == [("run", None)]


def test_a_group_in_parts_runs_every_phase_and_succeeds(cloud: LocalCloud) -> None:
    run_id, ids = _start(cloud)
    cloud.drain()
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert all(i.status is InstanceStatus.SUCCEEDED for i in instances.values())
    groups = cloud.store.list_groups(run_id)
    assert sorted(g.size for g in groups) == [1, 3, 3]
    assert {g.barrier for g in groups} == {"run"}
    assert all(g.finalized for g in groups)
    # Each part's phase is its own invocation: three stop calls, one per part.
    assert len(calls(cloud, "ec2", "StopInstances")) == 3
    assert sorted(i for c in calls(cloud, "ec2", "StopInstances") for i in c["InstanceIds"]) == (
        sorted(ids)
    )
    barrier = cloud.store.get_barrier(run_id, "run")
    assert barrier is not None
    assert barrier.parts == 3
    assert barrier.arrived == {str(p): 3 for p in run.plan[:-1]}
    assert barrier.count(Phase.PRE_SCRIPT, PhaseStatus.SUCCEEDED) == FLEET
    # Every lease was given back by its part's finalization.
    assert all(cloud.store.get_lease(i) is None for i in ids)


def test_no_part_stops_before_every_part_ended_its_pre_script(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    run_id, ids = _start(cloud)
    behaviour.script_seconds_by_instance[ids[-1]] = 900  # the last part's pre-script is slow
    cloud.drain()
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    last_pre_script = max(i.phase(Phase.PRE_SCRIPT).ended_at or "" for i in instances.values())
    first_stop = min(i.phase(Phase.STOP).started_at or "~" for i in instances.values())
    assert first_stop >= last_pre_script
    assert instances[ids[-1]].phase(Phase.PRE_SCRIPT).ended_at == last_pre_script


def test_a_pre_script_failing_in_one_part_aborts_every_part(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    run_id, ids = _start(cloud, OnPreScriptFailure="abort")
    behaviour.script_status[(ids[0], "PRE_SCRIPT")] = "Failed"
    cloud.drain()
    run, instances = outcome(cloud, run_id)
    assert calls(cloud, "backup", "StartBackupJob") == []
    assert calls(cloud, "ec2", "StopInstances") == []
    assert all(i.phase(Phase.BACKUP).status is PhaseStatus.SKIPPED for i in instances.values())
    # Every member is thawed all the same.
    posted = Counter(i for c in calls(cloud, "ssm", "SendCommand") for i in c["InstanceIds"])
    assert all(posted[i] == 2 for i in ids)
    assert run.status is RunStatus.FAILED


@pytest.mark.parametrize("operation", ["TransactWriteItems", "GetItem", "UpdateItem"])
def test_a_last_arrival_that_dies_before_releasing_is_released_by_the_reconciler(
    behaviour: Behaviour, cloud: LocalCloud, operation: str
) -> None:
    """The result handler whose report closes the last part's pre-script dies right after
    its arrival at the barrier (or after reading the barrier, or half-way through
    releasing the waiting parts): the reconciler releases whoever still waits."""
    run_id, _ids = _start(cloud)
    # The last report's calls: GetItem (its command), TransactWriteItems (its result),
    # GetItem (the part), GetItem (the run), TransactWriteItems (the arrival), GetItem (the
    # barrier), Query (the parts), UpdateItem (one release per waiting part).
    nth = {"TransactWriteItems": 2, "GetItem": 4, "UpdateItem": 1}[operation]

    def arm_on_last_report() -> bool:
        groups = cloud.store.list_groups(run_id)
        arrived = sum(g.phase_state is GroupPhaseState.WAITING for g in groups)
        return arrived == 2

    for _ in range(5_000):
        if arm_on_last_report():
            break
        assert cloud.step(1) == 1
    behaviour.crash_at_call[("script_invocation_changed", operation)] = nth
    cloud.drain(max_events=3_000)  # a run of this fleet takes a few hundred
    assert any(what.startswith("crash after") for _, what in cloud.timeline)
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED, run.reason
    assert all(i.status is InstanceStatus.SUCCEEDED for i in instances.values())


def test_a_cancel_fans_out_to_the_parts_in_a_forward_phase(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    behaviour.backup_seconds = 6 * 3600
    run_id, _ids = _start(cloud)
    for _ in range(5_000):
        groups = cloud.store.list_groups(run_id)
        if (
            groups
            and all(
                g.phase == Phase.BACKUP and g.phase_state is GroupPhaseState.OPEN for g in groups
            )
            and len(calls(cloud, "backup", "StartBackupJob")) == FLEET
        ):
            break
        assert cloud.step(1) == 1
    cloud.publish(
        {
            "version": "0",
            "id": "cancel-1",
            "detail-type": "PrePostBackup Cancel Requested",
            "source": "prepost-backup",
            "account": "123456789012",
            "time": "2026-11-26T02:30:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {"run_id": run_id, "reason": "maintenance"},
        }
    )
    cloud.drain()
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    # One part is cancelled by the cancel handler itself, the two others by an event each.
    fanned = [
        e["detail"]
        for e in cloud.emitted
        if e["detail-type"] == "PrePostBackup Cancel Requested" and e["detail"].get("group_id")
    ]
    assert len(fanned) == 2
    assert len(calls(cloud, "backup", "StopBackupJob")) == FLEET
    assert all(i.phase(Phase.BACKUP).status is PhaseStatus.FAILED for i in instances.values()), [
        i.phase(Phase.BACKUP) for i in instances.values()
    ]
    assert all(i.phase(Phase.START).status is PhaseStatus.SUCCEEDED for i in instances.values())


def test_a_group_cancel_event_for_a_run_not_cancelled_changes_nothing(
    cloud: LocalCloud,
) -> None:
    run_id, _ids = _start(cloud)
    cloud.publish(
        {
            "version": "0",
            "id": "forged-group-cancel",
            "detail-type": "PrePostBackup Cancel Requested",
            "source": "prepost-backup",
            "account": "123456789012",
            "time": "2026-11-26T02:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {"run_id": run_id, "group_id": "run.0"},
        },
        delay=120,
    )
    cloud.drain()
    run, _ = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert not run.cancelled
