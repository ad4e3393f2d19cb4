"""The pure decisions behind the failure policy (DESIGN.md sections 3 and 4)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.logic import decisions, phase_table
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    Consistency,
    InstanceRecord,
    InstanceStatus,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunStatus,
)
from chalicelib.models.targets import TargetInstance
from tests.conftest import seed_input

ALL = list(Phase)


def run_input(**changes: Any) -> RunInput:
    detail = seed_input() | changes
    return RunInput.model_validate(detail)


def instance(original_state: str = "running", **phase_statuses: PhaseStatus) -> InstanceRecord:
    phases = {p: PhaseResult(status=phase_statuses.get(p.name, PhaseStatus.PENDING)) for p in ALL}
    return InstanceRecord(
        run_id="r", group_id="g", instance_id="i-0123456789abcdef0",
        original_state=original_state, phases=phases,
    )  # fmt: skip


def test_plan_leaves_out_what_was_not_asked_for() -> None:
    assert decisions.plan(run_input()) == ALL
    assert decisions.plan(run_input(StartStopEC2Required=False)) == [
        Phase.PRE_SCRIPT, Phase.BACKUP, Phase.POST_SCRIPT,
    ]  # fmt: skip
    assert decisions.plan(run_input(RemoteRunCommandDetails={})) == [
        Phase.STOP, Phase.BACKUP, Phase.START,
    ]  # fmt: skip


def test_success_means_success_for_ssm() -> None:
    assert decisions.ssm_outcome("Success") is PhaseStatus.SUCCEEDED
    for in_flight in ("Pending", "InProgress", "Delayed", "Cancelling"):
        assert decisions.ssm_outcome(in_flight) is None
    for failure in (
        "Failed", "TimedOut", "Cancelled", "Undeliverable", "Delivery Timed Out",
        "Execution Timed Out", "Terminated", "Access Denied", "SomethingNew",
    ):  # fmt: skip
        assert decisions.ssm_outcome(failure) is PhaseStatus.FAILED


def test_success_means_success_for_backup() -> None:
    assert decisions.backup_outcome("COMPLETED") is PhaseStatus.SUCCEEDED
    for failure in ("FAILED", "ABORTED", "EXPIRED", "PARTIAL"):
        assert decisions.backup_outcome(failure) is PhaseStatus.FAILED
    for in_flight in ("CREATED", "PENDING", "RUNNING", "ABORTING"):
        assert decisions.backup_outcome(in_flight) is None


def test_stopped_instance_gets_no_script_and_no_power_change() -> None:
    stopped = instance("stopped")
    for phase in (Phase.PRE_SCRIPT, Phase.STOP, Phase.START, Phase.POST_SCRIPT):
        assert not phase_table.decide_member(phase, stopped, False, run_input()).act
    assert phase_table.decide_member(Phase.BACKUP, stopped, False, run_input()).act


def test_abort_skips_stop_and_backup_but_always_thaws() -> None:
    thawing = instance(PRE_SCRIPT=PhaseStatus.FAILED)
    assert not phase_table.decide_member(Phase.STOP, thawing, True, run_input()).act
    skip = phase_table.decide_member(Phase.BACKUP, thawing, True, run_input())
    assert not skip.act
    assert skip.reason is not None
    assert "abort" in skip.reason
    assert phase_table.decide_member(Phase.POST_SCRIPT, thawing, True, run_input()).act


def test_start_only_what_this_run_stopped() -> None:
    assert phase_table.decide_member(
        Phase.START, instance(STOP=PhaseStatus.SUCCEEDED), False, run_input()
    ).act
    for stop in (PhaseStatus.FAILED, PhaseStatus.SKIPPED):
        assert not phase_table.decide_member(
            Phase.START, instance(STOP=stop), False, run_input()
        ).act


def test_start_whatever_a_stop_may_have_stopped() -> None:
    """A stop whose intent was recorded but whose call was never recorded (the handler died
    right after StopInstances) and that then timed out may have stopped the instance."""
    for how in ({"timed_out": True}, {"reason": "run cancelled"}):
        tried = instance(STOP=PhaseStatus.FAILED)
        tried.phases[Phase.STOP] = tried.phases[Phase.STOP].model_copy(
            update={"started_at": "2026-11-26T02:00:30Z", **how}
        )
        assert phase_table.decide_member(Phase.START, tried, False, run_input()).act
    # A stop EC2 refused outright stopped nothing.
    refused = instance(STOP=PhaseStatus.FAILED)
    refused.phases[Phase.STOP] = refused.phases[Phase.STOP].model_copy(
        update={"started_at": "2026-11-26T02:00:30Z", "refused": True}
    )
    assert not phase_table.decide_member(Phase.START, refused, False, run_input()).act


def test_post_script_follows_the_pre_script() -> None:
    for pre in (PhaseStatus.SUCCEEDED, PhaseStatus.FAILED):
        assert phase_table.decide_member(
            Phase.POST_SCRIPT, instance(PRE_SCRIPT=pre), False, run_input()
        ).act
    stuck = instance(
        PRE_SCRIPT=PhaseStatus.SUCCEEDED, STOP=PhaseStatus.SUCCEEDED, START=PhaseStatus.FAILED
    )
    # Always thaw: even an instance left stopped is sent its post-script (SSM reports it
    # Undeliverable unless someone starts the instance within the delivery timeout).
    assert phase_table.decide_member(Phase.POST_SCRIPT, stuck, False, run_input()).act


def test_terminated_instance_is_skipped_everywhere() -> None:
    gone = instance().model_copy(update={"terminated": True})
    for phase in ALL:
        assert not phase_table.decide_member(phase, gone, False, run_input()).act


@pytest.mark.parametrize(
    ("original", "statuses", "with_pre", "expected"),
    [
        ("running", {"PRE_SCRIPT": PhaseStatus.SUCCEEDED}, True, Consistency.APP),
        ("running", {"PRE_SCRIPT": PhaseStatus.FAILED, "STOP": PhaseStatus.SUCCEEDED}, True,
         Consistency.CRASH),
        ("running", {"STOP": PhaseStatus.SUCCEEDED}, False, Consistency.APP),
        ("running", {"STOP": PhaseStatus.FAILED}, False, Consistency.CRASH),
        ("running", {}, False, Consistency.CRASH),
        ("stopped", {}, True, Consistency.APP),
    ],
)  # fmt: skip
def test_consistency_label(
    original: str, statuses: dict[str, PhaseStatus], with_pre: bool, expected: Consistency
) -> None:
    given = run_input() if with_pre else run_input(RemoteRunCommandDetails={})
    assert decisions.consistency(instance(original, **statuses), given) is expected


def test_instance_outcomes() -> None:
    done = {p.name: PhaseStatus.SUCCEEDED for p in ALL}
    outcome = decisions.instance_outcome
    assert outcome(instance(**done), ALL)[0] is InstanceStatus.SUCCEEDED
    assert (
        outcome(instance(**done | {"START": PhaseStatus.FAILED}), ALL)[0]
        is InstanceStatus.STUCK_STOPPED
    )
    assert outcome(instance(**done | {"BACKUP": PhaseStatus.FAILED}), ALL)[0] is (
        InstanceStatus.FAILED
    )
    status, reason = outcome(instance(**done | {"POST_SCRIPT": PhaseStatus.FAILED}), ALL)
    assert status is InstanceStatus.COMPLETED_WITH_ERRORS
    assert reason is not None
    assert reason.startswith("POST_SCRIPT")


def test_run_outcomes() -> None:
    ok = instance(BACKUP=PhaseStatus.SUCCEEDED)
    failed = instance(BACKUP=PhaseStatus.FAILED)
    gone = instance().model_copy(update={"status": InstanceStatus.SKIPPED})
    held = gone.model_copy(update={"skip_is_error": True})
    S, F = InstanceStatus.SUCCEEDED, InstanceStatus.FAILED  # noqa: N806
    skipped = InstanceStatus.SKIPPED
    assert decisions.run_outcome([(ok, S), (gone, skipped)])[0] is RunStatus.SUCCEEDED
    assert decisions.run_outcome([(ok, S), (held, skipped)])[0] is RunStatus.COMPLETED_WITH_ERRORS
    assert decisions.run_outcome([(ok, S), (failed, F)])[0] is RunStatus.COMPLETED_WITH_ERRORS
    assert decisions.run_outcome([(failed, F)])[0] is RunStatus.FAILED
    assert decisions.run_outcome([])[0] is RunStatus.FAILED


def test_groups() -> None:
    target = TargetInstance(
        instance_id="i-0123456789abcdef0", state="running", owner_id="1", tags={"cluster": "a#b"}
    )
    assert decisions.group_of(target, "run") == ("run", "run")
    assert decisions.group_of(target, "instance") == (target.instance_id, target.instance_id)
    group_id, label = decisions.group_of(target, "tag:cluster")
    assert label == "cluster=a#b"
    assert "#" not in group_id
    assert decisions.group_of(target, "tag:other")[1] == "other (untagged)"


def test_ids_are_stable_per_event_and_instance() -> None:
    moment = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    assert decisions.run_id_for("e1", moment) == decisions.run_id_for("e1", moment)
    assert decisions.run_id_for("e1", moment) != decisions.run_id_for("e2", moment)
    token = decisions.idempotency_token("run", "i-1")
    assert token == decisions.idempotency_token("run", "i-1")
    assert token != decisions.idempotency_token("run", "i-2")
