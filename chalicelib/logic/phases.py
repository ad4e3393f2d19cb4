"""A group enters a phase: decide per member, then make the phase's side effect.

What a phase is (whom it acts on, its side effect, its deadline, when the reconciler looks)
is read from its declaration (`phase_table.PHASES`); this module is the same for every phase.

Crash safety: the handler that opens a phase holds a claim on making its side effects.
Each member is marked IN_PROGRESS before any call (so no report can arrive before its
intent) and `sent` after the call is recorded; both in transactions of up to a hundred
members (one call, not one per member), all or none of each. A retry after a crash, or the
reconciler, finds members IN_PROGRESS and not `sent`, takes the claim over once it has run out, and
makes their side effects again without repeating one that happened: a script already sent
is found by its comment, a backup job by its idempotency token, and a stop or start is
simply asked again (EC2 answers with the state the instance is in).
"""

from __future__ import annotations

from chalicelib import observability
from chalicelib.clock import iso
from chalicelib.dependencies import Services
from chalicelib.logic.decisions import MemberDecision
from chalicelib.logic.phase_table import PHASES, decide_member
from chalicelib.logic.side_effects import PhaseContext
from chalicelib.logic.transitions import close_phase
from chalicelib.models.events import DetailType, PhaseRequest
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
    RunStatus,
)

# Longer than any phase handler may run (their Lambda timeout), shorter than a reconciler
# poll: a duplicate request meanwhile is ignored, a retry after a crash takes over.
EXECUTION_CLAIM_SECONDS = 300


def enter_phase(services: Services, request: PhaseRequest) -> None:
    """A group enters the requested phase (from its event, or from the reconciler)."""
    log = observability.logger()
    observability.bind_run(request.run_id)
    if request.more_group_ids:
        fan_out(services, request)
        return
    store = services.store
    group = store.get_group(request.run_id, request.group_id)
    if group is None or group.phase != request.phase:
        log.info("phase request ignored: group is elsewhere", **request.model_dump(mode="json"))
        return
    if group.phase_state is GroupPhaseState.OPEN:
        resume_phase(services, group)  # a retry after a crash, or a duplicate
        return
    if group.phase_state is not GroupPhaseState.REQUESTED:
        return
    run, run_input = _run(services, request.run_id)
    if run.status is RunStatus.STARTING:
        # The reconciler found the group due before its run header: the start is resumed
        # (and a kept cancel applied) first, and requests the group's phase itself.
        log.info("phase request ignored: the run is still starting", group_id=request.group_id)
        return
    members = store.list_instances(request.run_id, request.group_id)
    # The run's flag too: a cancel handler that died before reaching this group.
    cancelled = group.cancelled or run.cancelled
    declared = PHASES[request.phase]
    choices = [
        (m, decide_member(request.phase, m, group.aborted, run_input, cancelled)) for m in members
    ]
    now_epoch = services.now_epoch()
    deadline = now_epoch + declared.budget_seconds(run_input)
    if not store.open_phase(
        request.run_id, request.group_id, request.phase, len(members),
        deadline=deadline,
        due_at=min(deadline, now_epoch + declared.poll_seconds),
        claim_until=now_epoch + EXECUTION_CLAIM_SECONDS,
    ):  # fmt: skip
        log.info("phase request ignored: already opened", **request.model_dump(mode="json"))
        return
    actors = _mark(services, run.run_id, request.phase, choices)
    log.info(
        "phase opened",
        phase=request.phase,
        group_id=request.group_id,
        acting=len(actors),
        skipped=len(members) - len(actors),
    )
    opened = store.get_group(request.run_id, request.group_id)
    if opened is None:
        return
    if actors:
        _execute(services, run, run_input, opened, actors, resuming=False)
    else:
        close_phase(services, opened)


def fan_out(services: Services, request: PhaseRequest) -> None:
    """A request for many groups (a run's start, `transitions.phase_requests`): put one
    Phase Requested per group, as the start would have for fewer. Idempotent: a retry puts
    them again, and a group already in its phase ignores its request; should this event
    be lost, each group is due for the reconciler, which requests it."""
    group_ids = list(dict.fromkeys([request.group_id, *request.more_group_ids]))
    observability.logger().info("phase requests fanned out", phase=request.phase,
                                groups=len(group_ids))  # fmt: skip
    services.events.emit(
        [
            (DetailType.PHASE_REQUESTED, PhaseRequest(
                run_id=request.run_id, group_id=group_id, phase=request.phase
            ).model_dump(mode="json", exclude_defaults=True))
            for group_id in group_ids
        ]
    )  # fmt: skip


def _mark(
    services: Services,
    run_id: str,
    phase: Phase,
    choices: list[tuple[InstanceRecord, MemberDecision]],
) -> list[InstanceRecord]:
    """Mark PENDING members as decided, in transactions (a handler that dies between two
    leaves the rest PENDING, which its resumption decides and marks): a skipped one ends
    the phase SKIPPED (counted out of the group's `pending`), an acting one goes
    IN_PROGRESS; the acting members marked. Every member is of one group."""
    if not choices:
        return []
    store, now = services.store, iso(services.clock.now())
    group_id = choices[0][0].group_id
    skipped = {
        member.instance_id: {"ended_at": now} | ({"reason": choice.reason} if choice.reason else {})
        for member, choice in choices
        if not choice.act
    }
    if skipped:
        ended = store.finish_phases(
            run_id, group_id, phase, PhaseStatus.SKIPPED, skipped, expected=PhaseStatus.PENDING
        )
        for _ in ended:
            observability.phase_outcome(phase, PhaseStatus.SKIPPED)
    acting = {member.instance_id: member for member, choice in choices if choice.act}
    result = PhaseResult(status=PhaseStatus.IN_PROGRESS, started_at=now)
    marked = set(
        store.start_phases(
            run_id, group_id, phase, list(acting), result, expected=PhaseStatus.PENDING
        )
    )
    return [member for instance_id, member in acting.items() if instance_id in marked]


def resume_phase(
    services: Services, group: GroupRecord, members: list[InstanceRecord] | None = None
) -> bool:
    """Make the side effects of members that never got them (their handler died, or the
    call is to be retried), once nobody else holds the claim; whether it tried any.
    `members`: the group's members as just read, if the caller has them."""
    phase = Phase(group.phase)
    now_epoch = services.now_epoch()
    if members is None:
        members = services.store.list_instances(group.run_id, group.group_id)
    # Members its handler died before marking are decided and marked now, like unsent ones.
    unmarked = [m for m in members if m.phase(phase).status is PhaseStatus.PENDING]
    unsent = [
        member
        for member in members
        if member.phase(phase).status is PhaseStatus.IN_PROGRESS and not member.phase(phase).sent
    ]
    if not unsent and not unmarked:
        if group.pending <= 0:
            # Every member ended (its handler died after marking the last ones, skipped):
            # nothing to resume, but the phase must not wait for the reconciler to close.
            close_phase(services, group)
        return False
    if not services.store.claim_phase(
        group.run_id, group.group_id, phase, now_epoch, now_epoch + EXECUTION_CLAIM_SECONDS
    ):
        observability.logger().info("phase is being executed elsewhere", group_id=group.group_id)
        return False
    observability.logger().warning(
        "resuming side effects",
        phase=phase,
        group_id=group.group_id,
        members=len(unsent),
        unmarked=len(unmarked),
    )
    run, run_input = _run(services, group.run_id)
    if unmarked:
        latest = services.store.get_group(group.run_id, group.group_id) or group
        choices = [
            (
                m,
                decide_member(
                    phase, m, latest.aborted, run_input, latest.cancelled or run.cancelled
                ),
            )
            for m in unmarked
        ]
        unsent += _mark(services, group.run_id, phase, choices)
    if unsent:
        _execute(services, run, run_input, group, unsent, resuming=True)
    current = services.store.get_group(group.run_id, group.group_id)
    if current is not None and current.phase == group.phase and current.pending <= 0:
        close_phase(services, current)  # the members marked now were all skipped
    return True


def _run(services: Services, run_id: str) -> tuple[RunRecord, RunInput]:
    run = services.store.get_run(run_id)
    if run is None:
        raise LookupError(f"run {run_id} has a group but no header")
    return run, RunInput.model_validate_json(run.input_json)


def _execute(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    group: GroupRecord,
    members: list[InstanceRecord],
    resuming: bool,
) -> None:
    declared = PHASES[Phase(group.phase)]
    context = PhaseContext(services, run, run_input, group, declared, resuming)
    declared.execute(context, members)
