"""A handler that dies half-way through its state writes: what it left is resumed.

The crash points are counted per handler (`Behaviour.crash_at_call`), so that a test can
kill a phase's handler after it marked some of its members and before it marked the rest,
or the start handler right after it activated the run and before it announced it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chalicelib.logic.decisions import run_id_for
from chalicelib.logic.phase_table import PHASES
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import GroupPhaseState, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
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


@pytest.mark.parametrize("marked", [0, 2], ids=["none-marked", "two-marked"])
@pytest.mark.parametrize("phase", list(Phase), ids=[str(p) for p in Phase])
def test_members_left_pending_by_a_dead_handler_are_resumed(
    behaviour: Behaviour, cloud: LocalCloud, phase: Phase, marked: int
) -> None:
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    run_id = _publish(cloud)

    def requested() -> bool:
        groups = cloud.store.list_groups(run_id)
        return bool(groups) and all(
            g.phase == phase and g.phase_state is GroupPhaseState.REQUESTED for g in groups
        )

    _step_until(cloud, requested)
    # The phase's handler writes open_phase, then marks one member per write.
    behaviour.crash_at_call[(PHASES[phase].handler, "UpdateItem")] = 1 + marked
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
