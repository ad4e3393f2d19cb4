"""Reports from AWS (SSM, EC2, Backup events) become phase results of one instance."""

from __future__ import annotations

from chalicelib import observability
from chalicelib.dependencies import Services
from chalicelib.errors import CorrelationPendingError
from chalicelib.logic import decisions
from chalicelib.logic.transitions import finish
from chalicelib.models.events import BackupJobEvent, Ec2StateEvent, SsmInvocationEvent
from chalicelib.models.state import Phase, PhaseStatus


def script_invocation_changed(services: Services, event: SsmInvocationEvent) -> None:
    """One instance's script reached a status. Only `Success` counts as success."""
    detail = event.detail
    outcome = decisions.ssm_outcome(detail.status)
    if outcome is None:
        return
    command = services.store.get_command(detail.command_id)
    if command is None:
        if _script_awaiting_its_command_id(services, detail.instance_id):
            # SendCommand returned but its id is not written yet: retry, do not drop.
            raise CorrelationPendingError(f"command {detail.command_id} not recorded yet")
        observability.logger().info("not a command of this app", command_id=detail.command_id)
        return
    observability.bind_run(command["run_id"])
    finish(
        services,
        command["run_id"],
        command["group_id"],
        detail.instance_id,
        Phase(command["phase"]),
        outcome,
        reason=None if outcome is PhaseStatus.SUCCEEDED else f"SSM status {detail.status}",
    )


def _script_awaiting_its_command_id(services: Services, instance_id: str) -> bool:
    lease = services.store.get_lease(instance_id)
    instance = lease and services.store.get_instance(lease.run_id, lease.group_id, instance_id)
    if not instance:
        return False
    return any(
        instance.phases[phase].status is PhaseStatus.IN_PROGRESS
        and not instance.phases[phase].command_id
        for phase in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT)
        if phase in instance.phases
    )


def instance_state_changed(services: Services, event: Ec2StateEvent) -> None:
    """An instance stopped, started or went away."""
    detail = event.detail
    lease = services.store.get_lease(detail.instance_id)
    if lease is None:
        return  # not an instance of any run
    observability.bind_run(lease.run_id)
    key = (lease.run_id, lease.group_id, detail.instance_id)
    if detail.state == "stopped":
        finish(services, *key, Phase.STOP, PhaseStatus.SUCCEEDED)
    elif detail.state == "running":
        finish(services, *key, Phase.START, PhaseStatus.SUCCEEDED)
    elif detail.state in decisions.GONE_STATES:
        instance = services.store.get_instance(*key)
        if instance is None:
            return
        services.store.mark_terminated(*key)
        observability.logger().warning("instance terminated during the run", instance_id=key[2])
        for phase, result in instance.phases.items():
            if result.status is PhaseStatus.IN_PROGRESS:
                finish(
                    services, *key, phase, PhaseStatus.FAILED,
                    reason=f"instance {detail.state} during the phase",
                )  # fmt: skip


def backup_job_changed(services: Services, event: BackupJobEvent) -> None:
    """A backup job reached a state. Only `COMPLETED` counts as success."""
    detail = event.detail
    outcome = decisions.backup_outcome(detail.state)
    if outcome is None:
        return
    job = services.store.get_job(detail.backup_job_id)
    if job is None:
        observability.logger().info("not a job of this app", backup_job_id=detail.backup_job_id)
        return
    observability.bind_run(job["run_id"])
    succeeded = outcome is PhaseStatus.SUCCEEDED
    # The recovery point ARN of a completed job is the event's resource (AWS's sample).
    recovery_point = detail.recovery_point_arn or (
        event.resources[0] if succeeded and event.resources else None
    )
    reason = None
    if not succeeded:
        message = (detail.status_message or "").strip('"')
        reason = f"backup job {detail.state}" + (f": {message}" if message else "")
    finish(
        services,
        job["run_id"],
        job["group_id"],
        job["instance_id"],
        Phase.BACKUP,
        outcome,
        reason=reason,
        recovery_point_arn=recovery_point,
    )
