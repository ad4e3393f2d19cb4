"""The reconciler: what events did not deliver, it asks AWS for; past a deadline, it times out.

Runs on a schedule. It reads only the groups that are due (a sparse index), so its cost
grows with overdue work, not with the fleet. Every answer goes through the same code an
event would (`results.record_*` through the poll each phase declares, `phases.enter_phase`,
`finalize.group_completed`); a group due to enter its phase is requested by event first.
"""

from __future__ import annotations

from chalicelib import observability
from chalicelib.dependencies import Services
from chalicelib.errors import EventPublishError, GatewayError
from chalicelib.gateways import aws
from chalicelib.logic import (
    cancel,
    capture,
    decisions,
    finalize,
    phases,
    results,
    start_run,
    transient,
)
from chalicelib.logic.phase_declaration import PassMemo
from chalicelib.logic.phase_table import PHASES
from chalicelib.logic.transitions import close_phase, finish, release_parts
from chalicelib.models.events import DetailType, PhaseRequest
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseStatus,
    RunStatus,
)

# A due item that keeps failing is set aside (taken out of the due index, with the
# reason, for `prepost status` to show): after a few tries when retrying cannot help (a
# corrupt item, a group whose run is gone, an input that no longer validates); after four
# hours of ticks when AWS refused (a throttled or refused call may yet go through, and a
# run's Run Completed event must be put at least once).
# The AWS calls one reconciler pass makes before it leaves the rest of the due items to
# the next: far below what its timeout allows, and under the 1,000 any invocation makes.
PASS_CALL_BUDGET = 600
SET_ASIDE_AFTER = 3
SET_ASIDE_AFTER_AWS = 48
AWS_ERRORS = (GatewayError, EventPublishError)


def reconcile(services: Services) -> int:
    """Look at the items that are due, each on its own, earliest first, until this pass's
    share of AWS calls is spent (`PASS_CALL_BUDGET`; one item makes at most a few hundred:
    it is one part of a group); the rest stay due for the next pass. How many were looked
    at."""
    due = services.store.due_items(services.now_epoch())
    memo: PassMemo = {}
    started, looked = aws.CALLS.count, 0
    for run_id, group_id in due:
        if aws.CALLS.count - started >= PASS_CALL_BUDGET:
            observability.logger().warning(
                "reconciler pass budget spent; the rest waits for the next pass",
                looked_at=looked, left=len(due) - looked,
            )  # fmt: skip
            observability.count("ReconcilePassesCut")
            break
        looked += 1
        observability.bind_run(run_id)
        try:
            if group_id:
                _reconcile_group(services, run_id, group_id, memo)
            else:
                _reconcile_run(services, run_id)
        except Exception as exc:  # one item's trouble must not starve or fail the others
            _contain(services, run_id, group_id, exc)
    if looked:
        observability.count("GroupsReconciled", looked)
    return looked


def _contain(services: Services, run_id: str, group_id: str, error: Exception) -> None:
    """Log and count a due item's failure, note it on the item, and set the item aside
    once it has failed too often to be worth another try."""
    log, described = observability.logger(), f"{type(error).__name__}: {error}"
    log.exception("reconciling an item failed", group_id=group_id, error=described)
    observability.count("ReconcileErrors")
    try:
        failures = services.store.note_due_failure(
            run_id, group_id, described, services.now_epoch()
        )
        limit = SET_ASIDE_AFTER_AWS if isinstance(error, AWS_ERRORS) else SET_ASIDE_AFTER
        if failures >= limit:
            reason = f"the reconciler failed on it {failures} times; last: {described}"
            if services.store.set_aside(run_id, group_id, reason[:500]):
                log.error("item set aside", group_id=group_id, failures=failures)
                observability.count("ItemsSetAside")
    except Exception:  # the table itself failing: the next tick tries the item again
        log.exception("noting a reconciler failure failed", group_id=group_id)


def _reconcile_run(services: Services, run_id: str) -> None:
    """A run header is due: a start that never finished or was never announced, a run
    never finalized, or one finalized but never announced."""
    run = services.store.get_run(run_id)
    if run is None:
        return
    if run.status is RunStatus.STARTING:
        start_run.resume_start(services, run)
    elif run.status is RunStatus.RUNNING and run.start_announced_at is None:
        # Activated, but its handler died before the Run Started event was put.
        start_run.resume_announcement(services, run)
    elif run.status is RunStatus.RUNNING and run.groups_pending <= 0:
        finalize.finalize_run(services, run)
    elif run.status is RunStatus.RUNNING:
        observability.logger().error("run past its budget", groups_pending=run.groups_pending)
        services.store.rearm_run(run_id, services.now_epoch() + decisions.REQUEST_GRACE_SECONDS)
    elif run.announced_at is None:
        # Completed, but its handler died before the Run Completed event was put.
        observability.logger().warning("announcing a completed run", status=run.status)
        finalize.announce(services, run)


def _reconcile_group(services: Services, run_id: str, group_id: str, memo: PassMemo) -> None:
    store, now = services.store, services.now_epoch()
    group = store.get_group(run_id, group_id)
    if group is None or group.finalized:
        return
    observability.logger().info(
        "reconciling group", group_id=group_id, phase=group.phase, state=group.phase_state
    )
    if group.phase_state is GroupPhaseState.DONE:
        if group.jobs_pending > 0 and group.cancelled:  # its cancel event was lost
            cancel.cancel_one_group(services, run_id, group_id)
            group = store.get_group(run_id, group_id) or group
        if group.jobs_pending > 0:  # released at capture: its members' jobs still run
            _ask_after_released_jobs(services, group, memo)
        # Its Phase Completed (DONE) event was lost, or its handler kept failing.
        finalize.close_group(services, run_id, group_id)
        return
    phase = Phase(group.phase)
    if group.phase_state is GroupPhaseState.WAITING:
        _release_waiting(services, group, phase)
        return
    if group.phase_state is GroupPhaseState.REQUESTED:
        # Its turn came (paced), or its Phase Requested event was lost, or its handler
        # kept failing: requested again, by event, so that the phase runs in its own
        # handler (parts paced together run at once, each within its own time and calls;
        # run here, one after another, they would make this pass unbounded). If that
        # event does not get through either, the next look enters the phase here.
        request = PhaseRequest(run_id=run_id, group_id=group_id, phase=phase)
        if group.requested_again:
            store.rearm(run_id, group_id, group.phase, now + decisions.REQUEST_GRACE_SECONDS)
            phases.enter_phase(services, request)
        elif store.request_again(run_id, group_id, phase, now + decisions.REQUEST_GRACE_SECONDS):
            detail = request.model_dump(mode="json", exclude_defaults=True)
            services.events.emit([(DetailType.PHASE_REQUESTED, detail)])
        return
    if group.cancelled and PHASES[phase].forward:
        # Its cancel event was lost (or its handler kept failing): end its forward phase.
        cancel.cancel_one_group(services, run_id, group_id)
        group = store.get_group(run_id, group_id) or group
        if group.phase != phase or group.phase_state is not GroupPhaseState.OPEN:
            return
    # The members are read once, and again only after this look changed them (a state
    # asked and recorded, side effects resumed): a look at a group whose events arrive
    # costs one read of its members, whatever it finds.
    members = store.list_instances(run_id, group_id)
    if _ask_state_of_refused(services, phase, members):  # a stop or start refused for its state
        members = store.list_instances(run_id, group_id)
    unsent = _unsent(members, phase)
    if phases.resume_phase(services, group, members):  # members whose side effect was never made
        members = store.list_instances(run_id, group_id)
    waiting = [
        member
        for member in members
        if member.phase(phase).status is PhaseStatus.IN_PROGRESS and member.phase(phase).sent
    ]
    PHASES[phase].poll(services, waiting, phase, memo)  # as their events would have been
    capturing = phase is Phase.BACKUP and capture.waits_for_capture(group)
    if capturing:  # a capture poll lost, or its chain broken: look, and start it again
        capturing = capture.look(services, group)
        stale = (group.next_capture_poll or 0) + 2 * capture.poll_delay(group.capture_polls)
        if capturing and now >= stale:
            capture.send_poll(services, run_id, group_id, group.capture_polls)
    deadline = group.deadline or now
    # Made only now (a retry at the deadline): they get one more look before timing out.
    just_sent = unsent - _unsent(members, phase)
    if now >= deadline:
        if PHASES[phase].poll is results.poll_power_states:
            _ask_state_of_unsent(services, group, phase)
        _time_out(services, group, phase, spare=just_sent)
    current = store.get_group(run_id, group_id)
    if current and current.phase == group.phase and current.pending <= 0:
        close_phase(services, current)  # its last member finished but it never moved on
    elif now < deadline:  # (the poll may have ended some members: looked at sooner, then)
        look = capture.LOOK_SECONDS if capturing else _next_look(members, phase)
        store.rearm(run_id, group_id, group.phase, min(deadline, now + look))
    elif just_sent:
        store.rearm(run_id, group_id, group.phase, now + PHASES[phase].poll_seconds)


def _ask_after_released_jobs(services: Services, group: GroupRecord, memo: PassMemo) -> None:
    """A done group waits for the jobs of members it released at capture: ask AWS about
    them (their reports may have been lost) and, past the BACKUP deadline, time them out."""
    released = [
        member
        for member in services.store.list_instances(group.run_id, group.group_id)
        if member.phase(Phase.BACKUP).status is PhaseStatus.IN_PROGRESS
        and member.phase(Phase.BACKUP).released_at is not None
    ]
    PHASES[Phase.BACKUP].poll(services, released, Phase.BACKUP, memo)
    if group.jobs_deadline is None or services.now_epoch() < group.jobs_deadline:
        return
    for member in released:
        observability.logger().error(
            "backup job timed out after its release", instance_id=member.instance_id
        )
        finish(
            services, member.run_id, member.group_id, member.instance_id, Phase.BACKUP,
            PhaseStatus.FAILED, reason=f"{Phase.BACKUP} timed out: no result by its deadline",
            released_first=True, timed_out=True,
        )  # fmt: skip


def _release_waiting(services: Services, group: GroupRecord, phase: Phase) -> None:
    """A part waits at its group's barrier: release the parts if all have arrived (the
    last one's handler died, or its events were refused), else look again later."""
    run = services.store.get_run(group.run_id)
    if run is None or group.barrier is None:
        raise LookupError(f"part {group.group_id} waits without a run or a barrier")
    run_input = RunInput.model_validate_json(run.input_json)
    if not release_parts(services, run, run_input, group.barrier, phase, group.group_id):
        wait = services.now_epoch() + decisions.WAITING_LOOK_SECONDS
        services.store.rearm(group.run_id, group.group_id, phase, wait)


def _unsent(members: list[InstanceRecord], phase: Phase) -> set[str]:
    return {
        member.instance_id
        for member in members
        if member.phase(phase).status in (PhaseStatus.PENDING, PhaseStatus.IN_PROGRESS)
        and not member.phase(phase).sent
    }


def _ask_state_of_refused(services: Services, phase: Phase, members: list[InstanceRecord]) -> bool:
    """EC2 refused a stop or start for the instance's state (still `stopping`, or gone):
    ask the state now and record it as its event would be, before trying again; whether
    there was any to ask about."""
    refused = [
        member
        for member in members
        if member.phase(phase).status is PhaseStatus.IN_PROGRESS
        and not member.phase(phase).sent
        and transient.asks_state(phase, member.phase(phase).last_error_code)
    ]
    results.record_power_states(services, refused)
    return bool(refused)


def _ask_state_of_unsent(services: Services, group: GroupRecord, phase: Phase) -> None:
    """At the deadline of a stop or start whose call never went through (refused until
    then): an instance already where the phase would take it (a start whose stop was
    refused finds it running) succeeded; the others time out."""
    unsent = [
        member
        for member in services.store.list_instances(group.run_id, group.group_id)
        if member.phase(phase).status is PhaseStatus.IN_PROGRESS and not member.phase(phase).sent
    ]
    results.record_power_states(services, unsent)


def _next_look(members: list[InstanceRecord], phase: Phase) -> int:
    """Seconds until the group needs looking at again: a member awaiting its report at
    the phase's poll interval; a member whose side effect was refused (or never made)
    when its backoff says (`transient.backoff_seconds`); the soonest of these."""
    waits = []
    for member in members:
        result = member.phase(phase)
        if result.status is PhaseStatus.IN_PROGRESS and result.sent:
            waits.append(PHASES[phase].poll_seconds)
        elif result.status in (PhaseStatus.PENDING, PhaseStatus.IN_PROGRESS):
            waits.append(transient.backoff_seconds(result.retries or 0))
    return min(waits, default=PHASES[phase].poll_seconds)


def _time_out(
    services: Services, group: GroupRecord, phase: Phase, spare: set[str] | None = None
) -> None:
    """Past the deadline: whoever has not reported fails, and the group moves on, so the
    run's compensation (start what it stopped, thaw what it froze) follows as usual.
    The `spare` members were sent just now: they time out at the next look."""
    for member in services.store.list_instances(group.run_id, group.group_id):
        if spare and member.instance_id in spare:
            continue
        # PENDING: its handler died before marking it, and nobody could resume it since.
        status = member.phase(phase).status
        if status in (PhaseStatus.IN_PROGRESS, PhaseStatus.PENDING):
            observability.logger().error(
                "phase timed out", instance_id=member.instance_id, phase=phase
            )
            observability.phase_outcome(phase, "TIMED_OUT")
            finish(
                services,
                member.run_id,
                member.group_id,
                member.instance_id,
                phase,
                PhaseStatus.FAILED,
                reason=f"{phase} timed out: no result by its deadline"
                + (
                    f" (last error: {member.phase(phase).last_error})"
                    if member.phase(phase).last_error
                    else ""
                ),
                expected=status,
                timed_out=True,
            )
