"""A group enters a phase: decide per member, then make the phase's side effect.

Crash safety: the handler that opens a phase holds a claim on making its side effects.
Each member is marked IN_PROGRESS before any call (so no report can arrive before its
intent) and `sent` after the call is recorded. A retry after a crash, or the reconciler,
finds members IN_PROGRESS and not `sent`, takes the claim over once it has run out, and
makes their side effects again without repeating one that happened: a script already sent
is found by its comment, a backup job by its idempotency token, and a stop or start is
simply asked again (EC2 answers with the state the instance is in).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.dependencies import Services
from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import chunks
from chalicelib.gateways.ssm import MAX_INSTANCES_PER_COMMAND
from chalicelib.logic import decisions, policy
from chalicelib.logic.transitions import close_phase, finish, leased_instance
from chalicelib.models.events import PhaseRequest
from chalicelib.models.run_input import RunInput
from chalicelib.models.script_command import CommandRejectedError
from chalicelib.models.state import (
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
)

# Longer than any phase handler may run (their Lambda timeout), shorter than a reconciler
# poll: a duplicate request meanwhile is ignored, a retry after a crash takes over.
EXECUTION_CLAIM_SECONDS = 300
# Errors after which the side effect is tried again later rather than failed at once.
RETRY_LATER = {
    Phase.BACKUP: frozenset({"LimitExceededException", "ServiceUnavailableException"}),
    Phase.START: frozenset({"InsufficientInstanceCapacity", "InstanceLimitExceeded"}),
}

# (services, run, its input, the group, the members to act on, whether this is a resumption)
Executor = Callable[[Services, RunRecord, RunInput, GroupRecord, list[InstanceRecord], bool], None]


def run_scripts(services: Services, request: PhaseRequest) -> None:
    """PRE_SCRIPT and POST_SCRIPT: AWS-RunRemoteScript by explicit ids, 50 per command."""
    enter_phase(services, request)


def stop_instances(services: Services, request: PhaseRequest) -> None:
    enter_phase(services, request)


def start_backups(services: Services, request: PhaseRequest) -> None:
    enter_phase(services, request)


def start_instances(services: Services, request: PhaseRequest) -> None:
    enter_phase(services, request)


def enter_phase(services: Services, request: PhaseRequest) -> None:
    """A group enters the requested phase (from its event, or from the reconciler)."""
    log = observability.logger()
    observability.bind_run(request.run_id)
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
    members = store.list_instances(request.run_id, request.group_id)
    choices = [
        (m, decisions.decide_member(request.phase, m, group.aborted, run_input, group.cancelled))
        for m in members
    ]
    actors = [m for m, choice in choices if choice.act]
    skipped = [(m, choice.reason) for m, choice in choices if not choice.act]
    now_epoch = services.now_epoch()
    deadline = now_epoch + decisions.phase_budget_seconds(request.phase, run_input)
    if not store.open_phase(
        request.run_id, request.group_id, request.phase, len(actors), len(skipped),
        deadline=deadline,
        due_at=min(deadline, now_epoch + decisions.POLL_SECONDS[request.phase]),
        claim_until=now_epoch + EXECUTION_CLAIM_SECONDS,
    ):  # fmt: skip
        log.info("phase request ignored: already opened", **request.model_dump(mode="json"))
        return
    now = iso(services.clock.now())
    for member, reason in skipped:
        result = PhaseResult(status=PhaseStatus.SKIPPED, reason=reason, ended_at=now)
        store.set_phase_result(
            run.run_id, member.group_id, member.instance_id, request.phase, result,
            expected=PhaseStatus.PENDING,
        )  # fmt: skip
        observability.phase_outcome(request.phase, PhaseStatus.SKIPPED)
    for member in actors:
        result = PhaseResult(status=PhaseStatus.IN_PROGRESS, started_at=now)
        store.set_phase_result(
            run.run_id, member.group_id, member.instance_id, request.phase, result,
            expected=PhaseStatus.PENDING,
        )  # fmt: skip
    log.info(
        "phase opened",
        phase=request.phase,
        group_id=request.group_id,
        acting=len(actors),
        skipped=len(skipped),
    )
    opened = store.get_group(request.run_id, request.group_id)
    if opened is None:
        return
    if actors:
        EXECUTORS[request.phase](services, run, run_input, opened, actors, False)
    else:
        close_phase(services, opened)


def resume_phase(services: Services, group: GroupRecord) -> None:
    """Make the side effects of members that never got them (their handler died, or the
    call is to be retried), once nobody else holds the claim."""
    phase = Phase(group.phase)
    now_epoch = services.now_epoch()
    unsent = [
        member
        for member in services.store.list_instances(group.run_id, group.group_id)
        if member.phase(phase).status is PhaseStatus.IN_PROGRESS and not member.phase(phase).sent
    ]
    if not unsent:
        return
    if not services.store.claim_phase(
        group.run_id, group.group_id, phase, now_epoch, now_epoch + EXECUTION_CLAIM_SECONDS
    ):
        observability.logger().info("phase is being executed elsewhere", group_id=group.group_id)
        return
    observability.logger().warning(
        "resuming side effects", phase=phase, group_id=group.group_id, members=len(unsent)
    )
    run, run_input = _run(services, group.run_id)
    EXECUTORS[phase](services, run, run_input, group, unsent, True)


def _run(services: Services, run_id: str) -> tuple[RunRecord, RunInput]:
    run = services.store.get_run(run_id)
    if run is None:
        raise LookupError(f"run {run_id} has a group but no header")
    return run, RunInput.model_validate_json(run.input_json)


def _fail(
    services: Services, group: GroupRecord, phase: Phase, instance_id: str, error: Exception
) -> None:
    finish(
        services, group.run_id, group.group_id, instance_id, phase, PhaseStatus.FAILED,
        reason=str(error), refused=True,
    )  # fmt: skip


def _mark_sent(
    services: Services, group: GroupRecord, phase: Phase, instance_id: str, **ids: str
) -> None:
    services.store.annotate_phase(
        group.run_id, group.group_id, instance_id, phase, sent=True, **ids
    )


def _retry_later(
    services: Services,
    group: GroupRecord,
    phase: Phase,
    member: InstanceRecord,
    error: GatewayError,
) -> bool:
    """Whether `error` is one to try again later (the reconciler will, until the deadline)."""
    if error.code not in RETRY_LATER.get(phase, frozenset()):
        return False
    services.store.annotate_phase(
        group.run_id, group.group_id, member.instance_id, phase, last_error=str(error)
    )
    observability.logger().warning(
        "side effect refused for now; will retry", instance_id=member.instance_id, phase=phase,
        error=error.code,
    )  # fmt: skip
    observability.count(f"{phase}_RETRIED")
    return True


def _send_scripts(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    group: GroupRecord,
    members: list[InstanceRecord],
    resuming: bool,
) -> None:
    phase = Phase(group.phase)
    script = run_input.pre_script if phase is Phase.PRE_SCRIPT else run_input.post_script
    if script is None:
        raise ValueError(f"{phase} is in the plan but the input has no script for it")
    prefix = decisions.script_output_prefix(script.output_s3_key_prefix, run.run_id, phase)
    comment = script_comment(run.run_id, phase)
    unsent = []
    for member in members:
        started = member.phase(phase).started_at
        if resuming and started:  # a script sent by a handler that died is adopted
            found = services.ssm.find_command(member.instance_id, comment, parse_iso(started))
            if found:
                _record_command(services, run.run_id, group, phase, found, [member.instance_id])
                continue
        unsent.append(member)
    try:
        remote = policy.remote_script(script, services.settings, prefix)
    except CommandRejectedError as exc:
        # Allowed when the run started; the deployment's configuration changed since.
        for member in unsent:
            _fail(services, group, phase, member.instance_id, exc)
        return
    for batch in chunks(unsent, MAX_INSTANCES_PER_COMMAND):
        ids = [member.instance_id for member in batch]
        try:
            command_id = services.ssm.send_script(ids, remote, comment)
        except GatewayError as exc:
            if len(ids) == 1:
                _fail(services, group, phase, ids[0], exc)
                continue
            # One bad instance fails the whole command: send one by one so it fails alone.
            for instance_id in ids:
                try:
                    single = services.ssm.send_script([instance_id], remote, comment)
                except GatewayError as single_exc:
                    _fail(services, group, phase, instance_id, single_exc)
                else:
                    _record_command(services, run.run_id, group, phase, single, [instance_id])
            continue
        _record_command(services, run.run_id, group, phase, command_id, ids)


def script_comment(run_id: str, phase: Phase) -> str:
    """The comment of this run's script commands: how a lost command id is found again."""
    return f"prepost-backup {run_id} {phase}"


def adopt_command(
    services: Services, command_id: str, instance_id: str
) -> tuple[str, str, Phase] | None:
    """A report names a command whose id was never recorded (its sender died): if it is
    the script this instance's run is waiting for, record it now; (run, group, phase)."""
    instance = leased_instance(services, instance_id)
    if instance is None:
        return None
    for phase in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT):
        result = instance.phases.get(phase)
        if result is None or result.status is not PhaseStatus.IN_PROGRESS or result.command_id:
            continue
        if services.ssm.comment_of(command_id) == script_comment(instance.run_id, phase):
            group = services.store.get_group(instance.run_id, instance.group_id)
            if group is not None:
                _record_command(services, instance.run_id, group, phase, command_id, [instance_id])
                return instance.run_id, instance.group_id, phase
    return None


def _record_command(
    services: Services,
    run_id: str,
    group: GroupRecord,
    phase: Phase,
    command_id: str,
    instance_ids: list[str],
) -> None:
    services.store.put_command(command_id, run_id, group.group_id, phase, services.now_epoch())
    for instance_id in instance_ids:
        _mark_sent(services, group, phase, instance_id, command_id=command_id)
    observability.logger().info(
        "script sent", phase=phase, command_id=command_id, instances=len(instance_ids)
    )


def _change_power(
    services: Services,
    group: GroupRecord,
    members: list[InstanceRecord],
    call: Callable[[list[str]], dict[str, str | GatewayError]],
    arrived: str,
) -> None:
    """Stop or start; an instance already in the wanted state finishes at once (no event
    will come for it), the others finish on their state-change event."""
    phase = Phase(group.phase)
    by_id = {member.instance_id: member for member in members}
    outcome = call(list(by_id))
    for instance_id, state in outcome.items():
        if isinstance(state, GatewayError):
            if not _retry_later(services, group, phase, by_id[instance_id], state):
                _fail(services, group, phase, instance_id, state)
            continue
        _mark_sent(services, group, phase, instance_id)
        if state == arrived:
            finish(
                services, group.run_id, group.group_id, instance_id, phase,
                PhaseStatus.SUCCEEDED,
            )  # fmt: skip


def _stop(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    group: GroupRecord,
    members: list[InstanceRecord],
    resuming: bool,
) -> None:
    _change_power(services, group, members, services.ec2.stop, "stopped")


def _start(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    group: GroupRecord,
    members: list[InstanceRecord],
    resuming: bool,
) -> None:
    _change_power(services, group, members, services.ec2.start, "running")


def _start_backups(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    group: GroupRecord,
    members: list[InstanceRecord],
    resuming: bool,
) -> None:
    details = run_input.backup_details
    window = timedelta(minutes=details.start_window_minutes)
    for member in members:
        started = member.phase(Phase.BACKUP).started_at
        if resuming and started and services.clock.now() > parse_iso(started) + window:
            last_error = member.phase(Phase.BACKUP).last_error
            reason = "no backup job could be started within the start window" + (
                f" (last error: {last_error})" if last_error else ""
            )
            _fail(services, group, Phase.BACKUP, member.instance_id, RuntimeError(reason))
            continue
        label = decisions.consistency(member, run_input)
        tags = details.recovery_point_tags | {
            "prepost:run-id": run.run_id,
            "prepost:consistency": str(label),
        }
        try:
            # The token makes a repeated call (a resumption) return the same job.
            job_id = services.backup.start_backup_job(
                member.arn or "",
                details,
                decisions.idempotency_token(run.run_id, member.instance_id),
                tags,
            )
        except GatewayError as exc:
            if not _retry_later(services, group, Phase.BACKUP, member, exc):
                _fail(services, group, Phase.BACKUP, member.instance_id, exc)
            continue
        services.store.put_job(
            job_id, run.run_id, group.group_id, member.instance_id, services.now_epoch()
        )
        _mark_sent(
            services, group, Phase.BACKUP, member.instance_id,
            backup_job_id=job_id, consistency=str(label),
        )  # fmt: skip
        observability.logger().info(
            "backup job started", instance_id=member.instance_id, backup_job_id=job_id,
            consistency=label,
        )  # fmt: skip


EXECUTORS: dict[Phase, Executor] = {
    Phase.PRE_SCRIPT: _send_scripts,
    Phase.STOP: _stop,
    Phase.BACKUP: _start_backups,
    Phase.START: _start,
    Phase.POST_SCRIPT: _send_scripts,
}
