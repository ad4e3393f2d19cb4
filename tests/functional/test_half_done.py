"""A handler that dies half-way through its state writes: what it left is resumed.

The crash points are counted per handler (`Behaviour.crash_at_call`), so that a test can
kill a phase's handler after it marked some of its members and before it marked the rest,
or the start handler right after it activated the run and before it announced it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.clock import parse_iso
from chalicelib.logic.decisions import run_id_for
from chalicelib.logic.phase_table import PHASES
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import GroupPhaseState, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import VAULT, _check_policies, seed_input
from tests.functional.helpers import outcome, script_targets, statuses

FLEET = 3
RUN_STARTED = "PrePostBackup Run Started"


def _publish(cloud: LocalCloud) -> str:
    event = cloud.start_event(seed_input())
    cloud.publish(event)
    return run_id_for(event["id"], AwsEvent.model_validate(event).time)


EVENTS = 5_000  # a run of this fleet takes a few hundred; a stuck one ticks forever


def _step_until(cloud: LocalCloud, reached: Callable[[], bool]) -> None:
    for _ in range(EVENTS):
        if reached():
            return
        assert cloud.step(1) == 1, "the run went quiet before the point looked for"
    raise AssertionError("the point looked for was never reached")


def _crashed(cloud: LocalCloud) -> bool:
    return any(what.startswith("crash after") for _, what in cloud.timeline)


# The phase's handler writes open_phase (an UpdateItem), then marks its members IN_PROGRESS
# in one transaction: it dies after either.
CRASH_POINTS = [("UpdateItem", 0), ("TransactWriteItems", FLEET)]


@pytest.mark.parametrize(("call", "marked"), CRASH_POINTS, ids=["none-marked", "all-marked"])
@pytest.mark.parametrize("phase", list(Phase), ids=[str(p) for p in Phase])
def test_members_left_pending_by_a_dead_handler_are_resumed(
    behaviour: Behaviour, cloud: LocalCloud, phase: Phase, call: str, marked: int
) -> None:
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    run_id = _publish(cloud)

    def requested() -> bool:
        groups = cloud.store.list_groups(run_id)
        return bool(groups) and all(
            g.phase == phase and g.phase_state is GroupPhaseState.REQUESTED for g in groups
        )

    _step_until(cloud, requested)
    behaviour.crash_at_call[(PHASES[phase].handler, call)] = 1
    _step_until(cloud, lambda: _crashed(cloud))
    [group] = cloud.store.list_groups(run_id)
    assert group.phase_state is GroupPhaseState.OPEN
    members = cloud.store.list_instances(run_id)
    left = [i for i in members if i.phase(phase).status is PhaseStatus.PENDING]
    assert len(left) == FLEET - marked

    cloud.drain(EVENTS)
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    for instance_id in ids:
        assert statuses(instances[instance_id]) == dict.fromkeys(Phase, PhaseStatus.SUCCEEDED)
        assert cloud.state_of(instance_id) == "running"
    assert sorted(script_targets(cloud, Phase.POST_SCRIPT)) == sorted(ids)  # all thawed, once


def test_members_left_pending_past_the_deadline_time_out_and_are_compensated(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    """The reconciler cannot take the claim over before the deadline passes: the members
    the dead handler never marked time out, and the stopped instances are started again."""
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    run_id = _publish(cloud)
    _step_until(
        cloud,
        lambda: any(
            g.phase == Phase.STOP and g.phase_state is GroupPhaseState.REQUESTED
            for g in cloud.store.list_groups(run_id)
        ),
    )
    behaviour.crash_at_call[(PHASES[Phase.STOP].handler, "UpdateItem")] = 1
    _step_until(cloud, lambda: _crashed(cloud))
    [group] = cloud.store.list_groups(run_id)
    # Hold the claim past the deadline, as a handler that hangs until it times out would.
    assert group.deadline is not None
    held = group.deadline + 3600
    assert cloud.store.claim_phase(run_id, group.group_id, Phase.STOP, group.deadline, held)

    cloud.drain(EVENTS)
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    for instance_id in ids:
        stop = instances[instance_id].phase(Phase.STOP)
        assert stop.status is PhaseStatus.FAILED
        assert stop.timed_out
        assert cloud.state_of(instance_id) == "running"
    assert sorted(script_targets(cloud, Phase.POST_SCRIPT)) == sorted(ids)


def test_a_run_activated_by_a_handler_that_died_is_still_announced(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    # The start handler's first UpdateItem is activate_run (STARTING -> RUNNING).
    behaviour.crash_at_call[("start_run_handler", "UpdateItem")] = 1
    run_id = _publish(cloud)
    _step_until(cloud, lambda: _crashed(cloud))
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert not [e for e in cloud.emitted if e["detail-type"] == RUN_STARTED]

    cloud.drain(EVENTS)
    run, _ = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    started = [e["detail"] for e in cloud.emitted if e["detail-type"] == RUN_STARTED]
    assert [s["run_id"] for s in started] == [run_id]
    assert started[0]["instance_count"] == FLEET
    assert all(cloud.state_of(i) == "running" for i in ids)


# -- a handler that died right after its side effect, before recording it ---------------------


@pytest.fixture(params=["dynamodb", "memory"])
def any_store(request: pytest.FixtureRequest, behaviour: Behaviour) -> Iterator[LocalCloud]:
    """A local cloud on each state store (`cloud` is on moto's DynamoDB only)."""
    with LocalCloud(behaviour=behaviour, store=request.param) as local:
        local.create_vault(VAULT)
        yield local
        assert [(h, repr(e)) for h, _, e in local.dead_letters] == []
        _check_policies(local)


def _commands_by_instance(cloud: LocalCloud, phase: Phase) -> dict[str, list[str]]:
    """The command ids of `phase` that reached each instance, in the order sent."""
    reached: dict[str, list[str]] = {}
    for command_id, command in cloud.commands.items():
        if command["Comment"].endswith(str(phase)):
            for instance_id in command["InstanceIds"]:
                reached.setdefault(instance_id, []).append(command_id)
    return reached


def _assert_each_script_sent_once_and_recorded(
    cloud: LocalCloud, run_id: str, ids: list[str]
) -> None:
    """Guarantees 4 and 7: one command per instance and phase, its id on the record."""
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    for phase in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT):
        reached = _commands_by_instance(cloud, phase)
        assert sorted(reached) == sorted(ids)
        for instance_id in ids:
            assert len(reached[instance_id]) == 1, (phase, instance_id, reached[instance_id])
            result = instances[instance_id].phase(phase)
            assert result.command_id == reached[instance_id][0], (phase, instance_id)
            assert result.status is PhaseStatus.SUCCEEDED
    for instance_id in ids:
        assert statuses(instances[instance_id]) == dict.fromkeys(Phase, PhaseStatus.SUCCEEDED)
        assert cloud.state_of(instance_id) == "running"


@pytest.mark.parametrize("deaths", [1, 2], ids=["pre-sender-died", "both-senders-died"])
def test_a_command_whose_sender_died_is_recorded_for_every_instance_it_reached(
    behaviour: Behaviour, any_store: LocalCloud, deaths: int
) -> None:
    """The script reports adopt the command (the sender's retry cannot take the claim
    over yet): every member it was sent to records it, and none is sent it again."""
    cloud = any_store
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    behaviour.crash_after["SendCommand"] = deaths
    run_id = _publish(cloud)
    cloud.drain(EVENTS)
    assert _crashed(cloud)
    _assert_each_script_sent_once_and_recorded(cloud, run_id, ids)


def test_a_report_that_dies_while_adopting_a_command_leaves_it_to_adopt_again(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The sender dies after SendCommand; the first report adopting the command dies after
    recording it on two members. The command item is written last, so the other reports
    adopt it again rather than take it for recorded (found by the property test: the third
    member finished with no command id on its record)."""
    cloud = any_store
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    behaviour.crash_after["SendCommand"] = 1
    behaviour.crash_at_call[("script_invocation_changed", "UpdateItem")] = 2
    run_id = _publish(cloud)
    cloud.drain(EVENTS)
    crashes = [what for _, what in cloud.timeline if what.startswith("crash after")]
    assert crashes == ["crash after SendCommand", "crash after UpdateItem"]
    _assert_each_script_sent_once_and_recorded(cloud, run_id, ids)


def test_a_command_whose_sender_died_and_whose_reports_were_lost_is_adopted_on_resuming(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """No report comes: the reconciler resumes the send, finds the command and adopts it
    for every member it reached, rather than sending it again."""
    cloud = any_store
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    behaviour.crash_after["SendCommand"] = 1
    lost = {"done": False}

    def lose(event: dict[str, object]) -> bool:
        # The reports of the first command only: the reconciler polls for them.
        return event.get("source") == "aws.ssm" and not lost["done"]

    behaviour.lose_event = lose
    run_id = _publish(cloud)

    def adopted() -> bool:
        return any(i.phase(Phase.PRE_SCRIPT).command_id for i in cloud.store.list_instances(run_id))

    _step_until(cloud, adopted)
    lost["done"] = True
    cloud.drain(EVENTS)
    _assert_each_script_sent_once_and_recorded(cloud, run_id, ids)


@pytest.mark.parametrize("deaths", [1, 2], ids=["start-died", "resumed-start-died-too"])
def test_a_start_that_died_after_writing_its_instances_sends_each_pre_script_once(
    behaviour: Behaviour, any_store: LocalCloud, deaths: int
) -> None:
    cloud = any_store
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    behaviour.crash_after["BatchWriteItem"] = deaths
    run_id = _publish(cloud)
    cloud.drain(EVENTS)
    assert _crashed(cloud)
    _assert_each_script_sent_once_and_recorded(cloud, run_id, ids)


def test_groups_of_a_start_that_died_twice_are_not_written_again_once_acted_on(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The start dies after writing its groups and instances, and the reconciler that
    resumes it dies before writing them again: on the reconciler's retry the groups are
    due before the run header, so a group's first phase is opened (its pre-scripts sent)
    before the start is resumed. The resumed start must not write that group and its
    instances back to REQUESTED and PENDING, or the pre-scripts go out a second time."""
    cloud = any_store
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    behaviour.crash_after["BatchWriteItem"] = 1
    # The resumed start's look-up of its targets (the first EC2 call the reconciler makes).
    behaviour.crash_at_call[("reconcile_runs", "DescribeInstances")] = 1
    run_id = _publish(cloud)
    cloud.drain(EVENTS)
    crashes = [what for _, what in cloud.timeline if what.startswith("crash after")]
    assert crashes == ["crash after BatchWriteItem", "crash after DescribeInstances"]
    _assert_each_script_sent_once_and_recorded(cloud, run_id, ids)


def test_a_reconciler_that_dies_finalizing_the_last_group_leaves_the_run_due_soon(
    behaviour: Behaviour, any_store: LocalCloud
) -> None:
    """The last group's Phase Completed (DONE) is lost, so the reconciler closes the group;
    it dies after counting the group out (its third transaction: the members' outcomes,
    their leases, the count). The group is no
    longer due: the run header must be, minutes later, not at the end of the run's budget
    (found by the property test: a run completed hours after its last phase)."""
    cloud = any_store
    cloud.launch(FLEET, tags={"backup-job": "true"})

    def lose(event: dict[str, Any]) -> bool:
        detail = event.get("detail") or {}
        return event["detail-type"] == "PrePostBackup Phase Completed" and (
            detail.get("next_phase") == "DONE"
        )

    behaviour.lose_event = lose
    behaviour.crash_at_call[("reconcile_runs", "TransactWriteItems")] = 3
    run_id = _publish(cloud)
    cloud.drain(EVENTS)
    assert _crashed(cloud)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    # The group is over when its last phase ended and its last backup job did (released
    # at capture, the jobs outlive the post-scripts).
    last_phase = max(
        parse_iso(i.phase(phase).ended_at or "")
        for i in instances.values()
        for phase in (Phase.BACKUP, Phase.POST_SCRIPT)
    )
    assert parse_iso(run.finished_at or "") - last_phase < timedelta(minutes=20)
