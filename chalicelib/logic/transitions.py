"""The one way an instance finishes a phase, and a group moves to its next phase.

Events, side-effect failures and (later) the reconciler all go through `finish`.
"""

from __future__ import annotations

from typing import Any

from chalicelib import observability
from chalicelib.clock import iso
from chalicelib.dependencies import Services
from chalicelib.logic import decisions
from chalicelib.models.events import DetailType, PhaseCompleted, PhaseRequest
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    DONE,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseStatus,
    RunRecord,
)


def finish(
    services: Services,
    run_id: str,
    group_id: str,
    instance_id: str,
    phase: Phase,
    status: PhaseStatus,
    reason: str | None = None,
    *,
    expected: PhaseStatus = PhaseStatus.IN_PROGRESS,
    **details: Any,
) -> bool:
    """Record a terminal result of an IN_PROGRESS phase (or one still `expected`, such as
    a PENDING member timed out); close the group's phase if last.

    A duplicate, stale or late report finds the phase no longer IN_PROGRESS and changes
    nothing; it returns False.
    """
    log = observability.logger()
    fields = {"ended_at": iso(services.clock.now())} | {
        name: value for name, value in ({"reason": reason} | details).items() if value is not None
    }
    if not services.store.finish_phase(
        run_id, group_id, instance_id, phase, status, fields, expected
    ):
        log.info(
            "report ignored: phase not in progress (duplicate, stale or late)",
            instance_id=instance_id,
            phase=phase,
            reported=status,
        )
        # A late report that disagrees (a backup completing after its phase timed out or
        # was cancelled) is kept on the record; the outcome does not change.
        services.store.annotate_late_report(
            run_id, group_id, instance_id, phase, str(status),
            f"{status} at {fields['ended_at']}" + (f": {reason}" if reason else ""),
        )  # fmt: skip
        return False
    observability.phase_outcome(phase, status)
    level = log.info if status is PhaseStatus.SUCCEEDED else log.warning
    level("phase finished", instance_id=instance_id, phase=phase, status=status, reason=reason)
    group = services.store.get_group(run_id, group_id)
    if group and group.phase == phase and group.pending <= 0:
        close_phase(services, group)
    return True


def close_phase(services: Services, group: GroupRecord) -> None:
    """Every member is terminal: move the group on and say so."""
    if group.phase_state is not GroupPhaseState.OPEN:
        return
    run = services.store.get_run(group.run_id)
    if run is None:
        raise LookupError(f"run {group.run_id} has a group but no header")
    run_input = RunInput.model_validate_json(run.input_json)
    phase = Phase(group.phase)
    following = decisions.next_phase(run.plan, phase)
    aborted = group.aborted or (
        phase is Phase.PRE_SCRIPT
        and decisions.aborts_group(run_input, group.count(phase, PhaseStatus.FAILED))
    )
    due_at = services.now_epoch() + decisions.REQUEST_GRACE_SECONDS
    if not services.store.advance_group(
        group.run_id, group.group_id, phase, following, aborted, due_at
    ):
        return
    completed = PhaseCompleted(
        run_id=group.run_id,
        group_id=group.group_id,
        phase=phase,
        next_phase=str(following) if following else DONE,
        succeeded=group.count(phase, PhaseStatus.SUCCEEDED),
        failed=group.count(phase, PhaseStatus.FAILED),
        skipped=group.count(phase, PhaseStatus.SKIPPED),
    )
    observability.logger().info("group phase completed", **completed.model_dump(mode="json"))
    emitted = [(DetailType.PHASE_COMPLETED, completed.model_dump(mode="json"))]
    if following:
        emitted.append((DetailType.PHASE_REQUESTED, phase_request(run, group.group_id, following)))
    services.events.emit(emitted)


def phase_request(run: RunRecord, group_id: str, phase: Phase) -> dict[str, Any]:
    return PhaseRequest(run_id=run.run_id, group_id=group_id, phase=phase).model_dump(mode="json")


def leased_instance(services: Services, instance_id: str) -> InstanceRecord | None:
    """The record of an instance in the run that holds its lease, if a run holds it."""
    lease = services.store.get_lease(instance_id)
    if lease is None:
        return None
    return services.store.get_instance(lease.run_id, lease.group_id, instance_id)
