"""Cancellation at each phase: nothing forward any more, everything restored and thawed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from chalicelib.clock import iso
from chalicelib.dependencies import services
from chalicelib.logic import cancel
from chalicelib.logic.decisions import run_id_for
from chalicelib.logic.start_run import START_CLAIM_SECONDS, resume_start
from chalicelib.models.events import AwsEvent, CancelRequest
from chalicelib.models.state import Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from prepost.samples import load_event
from tests.conftest import VAULT, _check_policies, seed_input
from tests.functional.helpers import calls, fleet_calls, outcome, script_targets

# Virtual seconds after the start at which each phase is under way (default durations:
# scripts 30 s, stop 45 s; the backup job runs 60 s after it is started and its AMI is made
# 30 s later, when the group is released at capture (165 s); start 40 s).
DURING = {
    Phase.PRE_SCRIPT: 10,
    Phase.STOP: 50,
    Phase.BACKUP: 120,
    Phase.START: 180,
    Phase.POST_SCRIPT: 220,
}


def cancel_event(cloud: LocalCloud, run_id: str, reason: str = "operator asked") -> dict[str, Any]:
    event = load_event("prepost-cancel-requested")
    event.update(id=cloud.new_id(), time=iso(cloud.clock.now()))
    event["detail"] = {"run_id": run_id, "reason": reason}
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


# -- a cancel that comes before the run is RUNNING, or a cancel handler that died ----------

FORWARD = (("ssm", "SendCommand"), ("ec2", "StopInstances"), ("backup", "StartBackupJob"))
EVENTS = 5_000  # a run of these fleets takes a few hundred events


@pytest.fixture(params=["dynamodb", "memory"])
def any_store(request: pytest.FixtureRequest, behaviour: Behaviour) -> Iterator[LocalCloud]:
    """A local cloud on each state store (`cloud` is on moto's DynamoDB only)."""
    with LocalCloud(behaviour=behaviour, store=request.param) as local:
        local.create_vault(VAULT)
        yield local
        assert [(h, repr(e)) for h, _, e in local.dead_letters] == []
        _check_policies(local)


def _start(cloud: LocalCloud, delay: float = 0, **changes: Any) -> str:
    event = cloud.start_event(seed_input() | changes)
    cloud.publish(event, delay=delay)
    return run_id_for(event["id"], AwsEvent.model_validate(event).time)


def _step_until(cloud: LocalCloud, reached: Callable[[], bool]) -> None:
    for _ in range(EVENTS):
        if reached():
            return
        assert cloud.step(1) == 1, "the run went quiet before the point looked for"
    raise AssertionError("the point looked for was never reached")


def _assert_cancelled_before_any_phase(cloud: LocalCloud, run_id: str, ids: list[str]) -> None:
    """Nothing frozen, stopped or backed up; every instance as it was; the run CANCELLED."""
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.reason == "cancelled on request"
    assert run.cancelled
    for service, operation in FORWARD:
        assert not calls(cloud, service, operation), operation
    for instance_id in ids:
        assert cloud.state_of(instance_id) == "running"
        pre = instances[instance_id].phase(Phase.PRE_SCRIPT)
        assert pre.status is PhaseStatus.SKIPPED
        assert pre.reason == "run cancelled"


def test_a_cancel_published_before_its_start_event_is_applied_when_the_run_starts(
    any_store: LocalCloud,
) -> None:
    cloud = any_store
    ids = cloud.launch(2, tags={"backup-job": "true"})
    run_id = _start(cloud, delay=30)  # the start event is late: its cancel comes first
    cloud.publish(cancel_event(cloud, run_id))
    _step_until(cloud, lambda: cloud.store.pending_cancel(run_id) is not None)
    assert cloud.store.get_run(run_id) is None
    kept = cloud.store.pending_cancel(run_id)
    assert kept is not None
    assert kept.reason == "operator asked"

    cloud.drain(EVENTS)
    _assert_cancelled_before_any_phase(cloud, run_id, ids)


def test_a_cancel_sent_while_the_start_handler_is_retried_is_applied(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    cloud = any_store
    ids = cloud.launch(2, tags={"backup-job": "true"})
    # The start handler dies right after its first write, the STARTING run header.
    behaviour.crash_at_call[("start_run_handler", "PutItem")] = 1
    run_id = _start(cloud)
    cloud.step(1)
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.STARTING
    cloud.publish(cancel_event(cloud, run_id), delay=10)
    _step_until(cloud, lambda: cloud.store.pending_cancel(run_id) is not None)
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.STARTING

    cloud.drain(EVENTS)
    _assert_cancelled_before_any_phase(cloud, run_id, ids)


def test_a_kept_cancel_is_applied_when_the_run_is_announced_by_a_resumption(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The start is resumed and dies again right after it made the run RUNNING, before it
    looked for the kept cancel: the resumption that announces the run applies it."""
    cloud = any_store
    ids = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.crash_at_call[("start_run_handler", "PutItem")] = 1
    run_id = _start(cloud)
    cloud.publish(cancel_event(cloud, run_id), delay=10)
    _step_until(cloud, lambda: cloud.store.pending_cancel(run_id) is not None)
    # The reconciler takes the start over (reclaim_start), activates the run, and dies.
    behaviour.crash_at_call[("reconcile_runs", "UpdateItem")] = 2

    def activated_unannounced() -> bool:
        run = cloud.store.get_run(run_id)
        return run is not None and run.status is RunStatus.RUNNING

    _step_until(cloud, activated_unannounced)
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert not run.cancelled
    assert run.start_announced_at is None

    cloud.drain(EVENTS)
    _assert_cancelled_before_any_phase(cloud, run_id, ids)


def test_a_cancel_kept_after_the_start_handler_looked_is_applied_by_the_cancel_handler(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The other order: the cancel handler reads the run STARTING, the start handler
    activates it and finds nothing kept, then the cancel is kept: its handler's second
    read finds the run RUNNING and applies the cancel itself."""
    cloud = any_store
    ids = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.crash_at_call[("start_run_handler", "PutItem")] = 1
    run_id = _start(cloud)
    cloud.step(1)
    request = CancelRequest(run_id=run_id, reason="operator asked")
    services_ = services()
    real_keep = services_.store.keep_cancel

    def keep_after_the_start(kept: CancelRequest, at: str, now_epoch: int) -> bool:
        # The start handler's claim runs out and its retry finishes the start right now.
        cloud.clock.advance_to(cloud.clock.after(START_CLAIM_SECONDS + 1))
        stored = cloud.store.get_run(run_id)
        assert stored is not None
        resume_start(services_, stored)
        assert cloud.store.get_run(run_id).status is RunStatus.RUNNING  # type: ignore[union-attr]
        return real_keep(kept, at, now_epoch)

    racing = replace(services_, store=_Racing(services_.store, keep_after_the_start))
    cancel.cancel_run(racing, request)

    cloud.drain(EVENTS)
    _assert_cancelled_before_any_phase(cloud, run_id, ids)


class _Racing:
    """The store, with `keep_cancel` replaced (a concurrent handler runs just before it)."""

    def __init__(self, store: Any, keep_cancel: Any) -> None:
        self._store = store
        self.keep_cancel = keep_cancel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_cancel_handler_that_died_half_way_is_finished_by_its_retry(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    cloud = any_store
    behaviour.script_seconds = 600  # the pre-script still runs when the retry comes
    db = cloud.launch(2, tags={"backup-job": "true", "cluster": "db"})
    web = cloud.launch(2, tags={"backup-job": "true", "cluster": "web"})
    run_id = _start(cloud, GroupBy="tag:cluster")
    cloud.step(3)
    # It dies after cancelling the run (1st UpdateItem) and the first group (2nd).
    behaviour.crash_at_call[("cancel_run", "UpdateItem")] = 2
    cloud.publish(cancel_event(cloud, run_id), delay=10)
    _step_until(cloud, lambda: any(w.startswith("crash after") for _, w in cloud.timeline))
    groups = cloud.store.list_groups(run_id)
    assert len(groups) == 2
    assert sorted(g.cancelled for g in groups) == [False, True]

    cloud.drain(EVENTS)
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    assert all(g.cancelled for g in cloud.store.list_groups(run_id))
    assert not calls(cloud, "ec2", "StopInstances")
    assert not calls(cloud, "backup", "StartBackupJob")
    for instance_id in db + web:
        pre = instances[instance_id].phase(Phase.PRE_SCRIPT)
        assert (pre.status, pre.reason) == (PhaseStatus.FAILED, "run cancelled")
        assert instances[instance_id].phase(Phase.BACKUP).status is PhaseStatus.SKIPPED
        assert cloud.state_of(instance_id) == "running"
    assert sorted(script_targets(cloud, Phase.POST_SCRIPT)) == sorted(db + web)  # thawed


def test_a_group_the_dead_cancel_handler_never_reached_starts_no_forward_phase(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The cancel handler dies right after cancelling the run, before marking any group;
    the pre-scripts end before Lambda retries it. The next phase reads the run's flag and
    stops nothing (found by the property test: the groups stopped their instances)."""
    cloud = any_store
    behaviour.script_seconds = 20  # the pre-scripts end before the retry, a minute later
    ids = cloud.launch(2, tags={"backup-job": "true", "cluster": "db"})
    ids += cloud.launch(2, tags={"backup-job": "true", "cluster": "web"})
    run_id = _start(cloud, GroupBy="tag:cluster")
    cloud.step(3)
    behaviour.crash_at_call[("cancel_run", "UpdateItem")] = 1
    cloud.publish(cancel_event(cloud, run_id), delay=5)
    _step_until(cloud, lambda: any(w.startswith("crash after") for _, w in cloud.timeline))
    assert not any(g.cancelled for g in cloud.store.list_groups(run_id))

    cloud.drain(EVENTS)
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    assert not calls(cloud, "ec2", "StopInstances")
    assert not calls(cloud, "backup", "StartBackupJob")
    for instance_id in ids:
        assert instances[instance_id].phase(Phase.STOP).status is PhaseStatus.SKIPPED
        assert cloud.state_of(instance_id) == "running"
    assert sorted(script_targets(cloud, Phase.POST_SCRIPT)) == sorted(ids)  # thawed


def test_a_pre_script_whose_sender_died_is_recorded_when_the_run_is_cancelled(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The sender dies right after SendCommand and the cancel comes before its retry: the
    cancel finds the command (ListCommands) and records it on every member it reached,
    whose reports come after the run let go of them (found by the property test: the
    records held no command id, guarantee 7)."""
    cloud = any_store
    ids = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.crash_after["SendCommand"] = 1
    run_id = _start(cloud)
    _step_until(cloud, lambda: any(w.startswith("crash after") for _, w in cloud.timeline))
    cloud.publish(cancel_event(cloud, run_id), delay=5)
    cloud.drain(EVENTS)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    command = cloud.succeeded("ssm", "SendCommand")[0]
    [sent] = [c for c in cloud.commands if cloud.commands[c]["Comment"].endswith("PRE_SCRIPT")]
    for instance_id in ids:
        pre = instances[instance_id].phase(Phase.PRE_SCRIPT)
        assert (pre.command_id, pre.status) == (sent, PhaseStatus.FAILED)
    assert sorted(command["InstanceIds"]) == sorted(ids)
    assert sorted(script_targets(cloud, Phase.POST_SCRIPT)) == sorted(ids)  # thawed


def test_a_kept_cancel_holds_groups_that_come_due_before_their_starting_run(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """A cancel is kept before its run exists; the start dies after writing its items, and
    so does the reconciler that resumes it. On the reconciler's retry the groups come due
    before the run header: a group of a run still STARTING must not enter its first phase
    (found by the property test: backup jobs were started for the cancelled run)."""
    cloud = any_store
    ids = cloud.launch(3, tags={"backup-job": "true"})
    detail = seed_input() | {"StartStopEC2Required": False}
    detail["RemoteRunCommandDetails"] = {
        k: v
        for k, v in detail["RemoteRunCommandDetails"].items()
        if k not in ("PreBackupScriptDetails", "PostBackupScriptDetails")
    }
    event = cloud.start_event(detail)
    run_id = run_id_for(event["id"], AwsEvent.model_validate(event).time)
    cloud.publish(cancel_event(cloud, run_id))
    cloud.publish(event, delay=1)
    behaviour.crash_after["BatchWriteItem"] = 1
    # The resumed start's look-up of its targets (the first EC2 call the reconciler makes).
    behaviour.crash_at_call[("reconcile_runs", "DescribeInstances")] = 1
    cloud.drain(EVENTS)
    crashes = [what for _, what in cloud.timeline if what.startswith("crash after")]
    assert crashes == ["crash after BatchWriteItem", "crash after DescribeInstances"]

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.CANCELLED
    assert [o for _, o in fleet_calls(cloud) if o not in ("DescribeInstances",)] == []
    assert all(instances[i].phase(Phase.BACKUP).status is PhaseStatus.SKIPPED for i in ids)
