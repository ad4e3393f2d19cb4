"""The one way an instance finishes a phase, and a group moves to its next phase.

Events, side-effect failures and (later) the reconciler all go through `finish`.
"""

from __future__ import annotations

from typing import Any

from chalicelib import observability
from chalicelib.clock import iso
from chalicelib.dependencies import Services
from chalicelib.logic import decisions, pacing
from chalicelib.models.events import FAN_OUT_GROUPS, DetailType, PhaseCompleted, PhaseRequest
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
    released_first: bool = False,
    **details: Any,
) -> bool:
    """Record a terminal result of an IN_PROGRESS phase (or one still `expected`, such as
    a PENDING member timed out); close the group's phase if last.

    A member released at capture (`capture.py`) ends its BACKUP apart: counted out of the
    group's `jobs_pending`, not of its `pending` (`released_first`: the caller knows it was
    released, so that is tried first; either way both are tried).

    A duplicate, stale or late report finds the phase no longer IN_PROGRESS and changes
    nothing; it returns False.
    """
    log = observability.logger()
    fields = {"ended_at": iso(services.clock.now())} | {
        name: value for name, value in ({"reason": reason} | details).items() if value is not None
    }
    if (
        phase is Phase.BACKUP
        and released_first
        and _finish_released(services, run_id, group_id, instance_id, status, fields)
    ):
        return True
    if not services.store.finish_phase(
        run_id, group_id, instance_id, phase, status, fields, expected
    ):
        if (
            phase is Phase.BACKUP
            and not released_first
            and expected is PhaseStatus.IN_PROGRESS
            and _finish_released(services, run_id, group_id, instance_id, status, fields)
        ):
            return True
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


def _finish_released(
    services: Services,
    run_id: str,
    group_id: str,
    instance_id: str,
    status: PhaseStatus,
    fields: dict[str, Any],
) -> bool:
    """The job of a member released at capture ended: its BACKUP result ends, and a group
    that went through its last phase and waited for this job is done."""
    if not services.store.finish_released(run_id, group_id, instance_id, status, fields):
        return False
    observability.phase_outcome(Phase.BACKUP, status)
    level = observability.logger().info
    if status is not PhaseStatus.SUCCEEDED:
        level = observability.logger().warning
    # The same line as any phase's end (queries of the logs find every BACKUP result).
    level("phase finished", instance_id=instance_id, phase=Phase.BACKUP, status=status,
          reason=fields.get("reason"), released_at_capture=True)  # fmt: skip
    group = services.store.get_group(run_id, group_id)
    if group and group.phase_state is GroupPhaseState.DONE and group.jobs_pending <= 0:
        # Its Phase Completed (DONE) found this job running: say it again, now; due soon
        # (as when it went through its last phase), should the event be lost.
        soon = services.now_epoch() + decisions.REQUEST_GRACE_SECONDS
        services.store.rearm(run_id, group_id, DONE, soon)
        _say_completed(services, group, Phase.BACKUP, None, [])
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
    if group.barrier is not None and following is not None:
        # A part of a large group: it waits for the other parts, and the last one to
        # arrive moves them all on (should it die first, the reconciler does).
        if not services.store.arrive_at_barrier(group, following, aborted, due_at):
            return
        _say_completed(services, group, phase, following, [])
        if not release_parts(services, run, run_input, group.barrier, following, group.group_id):
            # Not the last to arrive: that one releases this part. Due soon until here
            # (this handler may die), then only as a safety net.
            wait = services.now_epoch() + decisions.WAITING_LOOK_SECONDS
            services.store.rearm(group.run_id, group.group_id, following, wait)
        return
    if not services.store.advance_group(
        group.run_id, group.group_id, phase, following, aborted, due_at
    ):
        return
    emitted: list[tuple[str, dict[str, Any]]] = []
    if following:
        emitted.append((DetailType.PHASE_REQUESTED, phase_request(run, group.group_id, following)))
    _say_completed(services, group, phase, following, emitted)


def _say_completed(
    services: Services,
    group: GroupRecord,
    phase: Phase,
    following: Phase | None,
    emitted: list[tuple[str, dict[str, Any]]],
) -> None:
    """Put the group's Phase Completed event, before the other events `emitted`."""
    completed = PhaseCompleted(
        run_id=group.run_id,
        group_id=group.group_id,
        phase=phase,
        next_phase=str(following) if following else DONE,
        succeeded=group.count(phase, PhaseStatus.SUCCEEDED),
        failed=group.count(phase, PhaseStatus.FAILED),
        skipped=group.count(phase, PhaseStatus.SKIPPED),
        released=group.counts.get(f"{phase}_CAPTURED", 0)
        + group.counts.get(f"{phase}_RELEASED", 0),
    )
    observability.logger().info("group phase completed", **completed.model_dump(mode="json"))
    services.events.emit(
        [(DetailType.PHASE_COMPLETED, completed.model_dump(mode="json")), *emitted]
    )


def release_parts(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    barrier_id: str,
    phase: Phase,
    releasing: str,
) -> bool:
    """Once every part of a group finished the phase before `phase`, move the parts that
    wait at the barrier into `phase` (each once), with the group's abort decision taken
    on all its members' results; whether the barrier was complete. Called by the last
    part to arrive, and by the reconciler for a part left waiting; the part `releasing`
    (the caller's) is released last, so that it stays due, and the reconciler finishes
    the release, should this handler die half-way."""
    store = services.store
    finished = decisions.previous_phase(run.plan, phase)
    barrier = store.get_barrier(run.run_id, barrier_id)
    if finished is None or barrier is None or not barrier.complete(finished):
        return False
    aborted = finished is Phase.PRE_SCRIPT and decisions.aborts_group(
        run_input, barrier.count(Phase.PRE_SCRIPT, PhaseStatus.FAILED)
    )
    now = services.now_epoch()
    waiting = sorted(
        (
            part
            for part in store.list_groups(run.run_id)
            if part.barrier == barrier_id
            and part.phase == phase
            and part.phase_state is GroupPhaseState.WAITING
        ),
        key=lambda part: part.group_id == releasing,
    )
    # Paced (`pacing.py`): a part whose turn is later is released due then, without an
    # event; the reconciler requests it when it is due.
    slots = pacing.schedule(services.settings, phase, [part.size for part in waiting])
    released = [
        (part, slot)
        for part, slot in zip(waiting, slots, strict=True)
        if store.release_group(
            run.run_id, part.group_id, phase, part.aborted or aborted,
            now + (slot.offset or decisions.REQUEST_GRACE_SECONDS), slot.calls_per_second,
        )
    ]  # fmt: skip
    if not released:
        return True
    later = sum(1 for _, slot in released if slot.offset)
    observability.logger().info(
        "group parts released", barrier=barrier_id, phase=phase, parts=len(released),
        paced_for_later=later,
    )  # fmt: skip
    services.events.emit(
        [
            (DetailType.PHASE_REQUESTED, phase_request(run, part.group_id, phase))
            for part, slot in released
            if not slot.offset
        ]
    )
    return True


def phase_request(run: RunRecord, group_id: str, phase: Phase) -> dict[str, Any]:
    return PhaseRequest(run_id=run.run_id, group_id=group_id, phase=phase).model_dump(
        mode="json", exclude_defaults=True
    )


# Up to this many groups get their Phase Requested events from the handler at hand; more
# (a run of one group per instance) get requests for many groups each, which the phase's
# handler fans out (`phases.fan_out`): a 10,000-group start puts 2 PutEvents, not 1,000.
FAN_OUT_INLINE = 100
FAN_OUT_BYTES = 20_000  # of group ids per request: ten requests fit one PutEvents (256 KB)


def phase_requests(run: RunRecord, group_ids: list[str], phase: Phase) -> list[dict[str, Any]]:
    """The Phase Requested details that request `phase` for `group_ids`."""
    if len(group_ids) <= FAN_OUT_INLINE:
        return [phase_request(run, group_id, phase) for group_id in group_ids]
    requests, chunk, size = [], list[str](), 0
    for group_id in group_ids:
        if chunk and (len(chunk) == FAN_OUT_GROUPS or size + len(group_id) > FAN_OUT_BYTES):
            requests.append(_many(run, chunk, phase))
            chunk, size = [], 0
        chunk.append(group_id)
        size += len(group_id.encode()) + 3  # its quotes and comma
    return [*requests, _many(run, chunk, phase)]


def _many(run: RunRecord, group_ids: list[str], phase: Phase) -> dict[str, Any]:
    request = PhaseRequest(
        run_id=run.run_id, group_id=group_ids[0], phase=phase, more_group_ids=group_ids[1:]
    )
    return request.model_dump(mode="json", exclude_defaults=True)


def leased_instance(services: Services, instance_id: str) -> InstanceRecord | None:
    """The record of an instance in the run that holds its lease, if a run holds it."""
    lease = services.store.get_lease(instance_id)
    if lease is None:
        return None
    return services.store.get_instance(lease.run_id, lease.group_id, instance_id)
