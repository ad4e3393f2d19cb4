"""A group enters a phase: decide per member, then make the phase's side effect.

One entry point per phase handler; they share `enter_phase`, which guards against
duplicate requests, records skips with their reasons and marks the members it acts on
IN_PROGRESS before any call is made, so that no report can arrive before its intent.
"""

from __future__ import annotations

from collections.abc import Callable

from chalicelib import observability
from chalicelib.clock import iso
from chalicelib.dependencies import Services
from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import chunks
from chalicelib.gateways.ssm import MAX_INSTANCES_PER_COMMAND
from chalicelib.logic import decisions
from chalicelib.logic.transitions import close_phase, finish
from chalicelib.models.events import PhaseRequest
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    GroupPhaseState,
    InstanceRecord,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
)

Executor = Callable[[Services, RunRecord, RunInput, PhaseRequest, list[InstanceRecord]], None]


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
    if (
        group is None
        or group.phase != request.phase
        or group.phase_state is not GroupPhaseState.REQUESTED
    ):
        log.info("phase request ignored: group is elsewhere", **request.model_dump(mode="json"))
        return
    run = store.get_run(request.run_id)
    if run is None:
        raise LookupError(f"run {request.run_id} has a group but no header")
    run_input = RunInput.model_validate_json(run.input_json)
    members = store.list_instances(request.run_id, request.group_id)
    choices = [
        (m, decisions.decide_member(request.phase, m, group.aborted, run_input)) for m in members
    ]
    actors = [m for m, choice in choices if choice.act]
    skipped = [(m, choice.reason) for m, choice in choices if not choice.act]
    now_epoch = services.now_epoch()
    deadline = now_epoch + decisions.phase_budget_seconds(request.phase, run_input)
    due_at = min(deadline, now_epoch + decisions.POLL_SECONDS[request.phase])
    if not store.open_phase(
        request.run_id, request.group_id, request.phase, len(actors), len(skipped),
        deadline, due_at,
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
    if actors:
        EXECUTORS[request.phase](services, run, run_input, request, actors)
    else:
        reopened = store.get_group(request.run_id, request.group_id)
        if reopened:
            close_phase(services, reopened)


def _fail(services: Services, request: PhaseRequest, instance_id: str, error: Exception) -> None:
    finish(
        services, request.run_id, request.group_id, instance_id, request.phase,
        PhaseStatus.FAILED, reason=str(error),
    )  # fmt: skip


def _send_scripts(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    request: PhaseRequest,
    actors: list[InstanceRecord],
) -> None:
    script = run_input.pre_script if request.phase is Phase.PRE_SCRIPT else run_input.post_script
    if script is None:
        raise ValueError(f"{request.phase} is in the plan but the input has no script for it")
    prefix = "/".join(
        part for part in (script.output_s3_key_prefix, run.run_id, request.phase.lower()) if part
    )
    comment = f"prepost-backup {run.run_id} {request.phase}"
    for batch in chunks(actors, MAX_INSTANCES_PER_COMMAND):
        ids = [member.instance_id for member in batch]
        try:
            command_id = services.ssm.send_script(ids, script, prefix, comment)
        except GatewayError as exc:
            for instance_id in ids:
                _fail(services, request, instance_id, exc)
            continue
        services.store.put_command(
            command_id, run.run_id, request.group_id, request.phase, services.now_epoch()
        )
        for instance_id in ids:
            services.store.annotate_phase(
                run.run_id, request.group_id, instance_id, request.phase, command_id=command_id
            )
        observability.logger().info(
            "script sent", phase=request.phase, command_id=command_id, instances=len(ids)
        )


def _change_power(
    services: Services,
    request: PhaseRequest,
    actors: list[InstanceRecord],
    call: Callable[[list[str]], dict[str, str | GatewayError]],
    arrived: str,
) -> None:
    """Stop or start; an instance already in the wanted state finishes at once (no event
    will come for it), the others finish on their state-change event."""
    outcome = call([member.instance_id for member in actors])
    for instance_id, state in outcome.items():
        if isinstance(state, GatewayError):
            _fail(services, request, instance_id, state)
        elif state == arrived:
            finish(
                services, request.run_id, request.group_id, instance_id, request.phase,
                PhaseStatus.SUCCEEDED,
            )  # fmt: skip


def _stop(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    request: PhaseRequest,
    actors: list[InstanceRecord],
) -> None:
    _change_power(services, request, actors, services.ec2.stop, "stopped")


def _start(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    request: PhaseRequest,
    actors: list[InstanceRecord],
) -> None:
    _change_power(services, request, actors, services.ec2.start, "running")


def _start_backups(
    services: Services,
    run: RunRecord,
    run_input: RunInput,
    request: PhaseRequest,
    actors: list[InstanceRecord],
) -> None:
    details = run_input.backup_details
    for member in actors:
        label = decisions.consistency(member, run_input)
        tags = details.recovery_point_tags | {
            "prepost:run-id": run.run_id,
            "prepost:consistency": str(label),
        }
        try:
            job_id = services.backup.start_backup_job(
                member.arn or "",
                details,
                decisions.idempotency_token(run.run_id, member.instance_id),
                tags,
            )
        except GatewayError as exc:
            _fail(services, request, member.instance_id, exc)
            continue
        services.store.put_job(
            job_id, run.run_id, request.group_id, member.instance_id, services.now_epoch()
        )
        services.store.annotate_phase(
            run.run_id, request.group_id, member.instance_id, Phase.BACKUP,
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
