"""What AWS reports (by event, or when the reconciler asks) becomes an instance's result.

The event handlers and the reconciler (through the `poll_*` functions its phases declare)
both go through the `record_*` functions, so a report means the same thing whichever way it
arrives. Which reported statuses end a phase is read from the phase's declaration.
"""

from __future__ import annotations

from chalicelib import observability
from chalicelib.clock import parse_iso
from chalicelib.dependencies import Services
from chalicelib.errors import CorrelationPendingError, GatewayError
from chalicelib.gateways.backup import TERMINAL_JOB_STATES
from chalicelib.logic import capture, decisions
from chalicelib.logic.phase_declaration import EC2_REPORTS, PassMemo, declarations, declared
from chalicelib.logic.side_effects import adopt_command
from chalicelib.logic.transitions import finish, leased_instance
from chalicelib.models.events import BackupJobEvent, Ec2StateEvent, SsmInvocationEvent
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import Consistency, InstanceRecord, Lease, Phase, PhaseStatus

InstanceKey = tuple[str, str, str]  # run id, group id, instance id
RELABELLED = f"recovery point relabelled {Consistency.CRASH}"


def record_script_status(
    services: Services, key: InstanceKey, phase: Phase, status: str, details: str = ""
) -> None:
    """One instance's script reached `status`. Only `Success` counts as success."""
    outcome = declared(phase).ends_on(status)
    if outcome is None:
        return
    reason = None
    if outcome is not PhaseStatus.SUCCEEDED:
        reason = f"SSM status {status}" + (f" ({details})" if details and details != status else "")
    finish(services, *key, phase, outcome, reason=reason)


def record_power_state(services: Services, key: InstanceKey, state: str) -> None:
    """An instance is now `state`: a stop or start finished, or the instance is gone."""
    for phase, declaration in declarations().items():
        if declaration.reported_by == EC2_REPORTS:
            outcome = declaration.ends_on(state)
            if outcome is not None:
                finish(services, *key, phase, outcome)
                return
    if state in decisions.GONE_STATES:
        instance = services.store.get_instance(*key)
        if instance is None:
            return
        services.store.mark_terminated(*key)
        observability.logger().warning("instance terminated during the run", instance_id=key[2])
        for phase, result in instance.phases.items():
            if phase is Phase.BACKUP and result.backup_job_id:
                continue  # its job goes on: the job's end (reported or polled) ends the phase
            if result.status is PhaseStatus.IN_PROGRESS:
                reason = f"instance {state} during the phase"
                finish(services, *key, phase, PhaseStatus.FAILED, reason=reason)


def record_backup_state(
    services: Services,
    key: InstanceKey,
    state: str,
    message: str | None,
    recovery_point_arn: str | None,
    *,
    released: bool = False,
    check_label: bool = False,
    backup_type: str | None = None,
) -> None:
    """A backup job reached `state`. Only `COMPLETED` counts as success. A terminal state
    is noted on the record (so that finalization knows the job is over); one reported after
    the phase ended otherwise (cancelled, timed out) relabels what the job produced and
    gives back the lease kept for the job. `released`: the member is known to have been
    released at capture; `check_label`: its label may depend on how its job ended (released
    at the freeze budget, or a Windows VSS backup asked for): `_label_completed`."""
    outcome = declared(Phase.BACKUP).ends_on(state)
    if outcome is None:
        return
    reason = None
    produced = recovery_point_arn
    if outcome is not PhaseStatus.SUCCEEDED:
        text = (message or "").strip('"')
        reason = f"backup job {state}" + (f": {text}" if text else "")
        recovery_point_arn = None
    recorded = finish(
        services, *key, Phase.BACKUP, outcome, reason=reason,
        recovery_point_arn=recovery_point_arn, job_state=state, released_first=released,
        backup_type=backup_type,
    )  # fmt: skip
    if recorded and outcome is PhaseStatus.SUCCEEDED and check_label and recovery_point_arn:
        _label_completed(services, key, recovery_point_arn, backup_type)
    if not recorded:
        # The phase ended otherwise (cancelled, timed out): the job's end is noted apart.
        services.store.annotate_phase(*key, Phase.BACKUP, job_state=state)
        _after_the_phase(services, key, state, produced)


VSS_BACKUP_TYPE = "WindowsVSS"  # DescribeBackupJob's BackupType of a VSS backup


def _label_completed(
    services: Services, key: InstanceKey, recovery_point_arn: str, backup_type: str | None
) -> None:
    """A completed job's recovery point is crash-consistent, whatever its tag said when
    the job started, if its member was released before its capture was seen (the freeze
    budget ran out), or if a Windows VSS backup was asked for and the job does not report
    one (AWS Backup falls back to a regular backup: docs/aws-facts.md)."""
    instance = services.store.get_instance(*key)
    if instance is None:
        return
    result = instance.phase(Phase.BACKUP)
    why = result.release_reason
    if result.windows_vss:
        if backup_type is None and result.backup_job_id:
            backup_type = services.backup.describe_job(result.backup_job_id).backup_type
            services.store.annotate_phase(*key, Phase.BACKUP, backup_type=backup_type or "")
        if backup_type != VSS_BACKUP_TYPE:
            why = "Windows VSS was asked for, and the job reports a regular backup"
    if why is None:
        return
    services.backup.relabel(recovery_point_arn, str(Consistency.CRASH))
    observability.logger().warning(
        "recovery point labelled crash-consistent", instance_id=key[2],
        recovery_point_arn=recovery_point_arn, reason=why,
    )  # fmt: skip
    services.store.annotate_phase(
        *key, Phase.BACKUP, consistency=str(Consistency.CRASH), release_reason=why
    )


def _after_the_phase(
    services: Services, key: InstanceKey, state: str, recovery_point_arn: str | None
) -> None:
    """A terminal job report for a phase that is over: a COMPLETED job whose phase ended
    otherwise ran on after the run went on (started, thawed): its recovery point is not
    app-consistent, whatever its tag said. Label only: the result stays as it was."""
    instance = services.store.get_instance(*key)
    if instance is None:
        return
    result = instance.phase(Phase.BACKUP)
    if state == "COMPLETED" and result.status is PhaseStatus.FAILED and recovery_point_arn:
        if result.consistency is not Consistency.CRASH:
            services.backup.relabel(recovery_point_arn, str(Consistency.CRASH))
            observability.logger().warning(
                "late backup relabelled crash-consistent", instance_id=key[2],
                recovery_point_arn=recovery_point_arn,
            )  # fmt: skip
        late = result.late_report or "COMPLETED after the phase ended"
        if RELABELLED not in late:
            late += f"; {RELABELLED}"
        services.store.annotate_phase(
            *key, Phase.BACKUP, consistency=str(Consistency.CRASH),
            recovery_point_arn=recovery_point_arn, late_report=late,
        )  # fmt: skip
    if result.backup_job_id:
        release_lease_kept_for(services, key[2], key[0], result.backup_job_id)


def release_lease_kept_for(
    services: Services, instance_id: str, run_id: str, backup_job_id: str
) -> None:
    """The job is terminal: give back the lease its run kept for it, if it kept one."""
    if services.store.release_lease_after_job(instance_id, run_id, backup_job_id):
        observability.logger().info(
            "lease released: backup job ended", instance_id=instance_id,
            backup_job_id=backup_job_id,
        )  # fmt: skip


def acquire_lease(services: Services, lease: Lease, now_epoch: int) -> Lease | None:
    """Take the lease on an instance (None), or say who holds it. A lease a finished run
    kept for its backup job is asked about: if AWS says the job is over (its terminal
    report was lost), the report is recorded as the event would have been (relabelling,
    giving the lease back), and the lease taken."""
    holder = services.store.acquire_lease(lease, now_epoch)
    if holder is None or holder.backup_job_id is None:
        return holder
    try:
        job = services.backup.describe_job(holder.backup_job_id)
    except GatewayError as exc:  # the instance stays held; the next run asks again
        observability.logger().warning(
            "could not ask about a lease's backup job", instance_id=lease.instance_id,
            backup_job_id=holder.backup_job_id, error=str(exc),
        )  # fmt: skip
        return holder
    if job.state not in TERMINAL_JOB_STATES:
        return holder
    key = (holder.run_id, holder.group_id, holder.instance_id)
    record_backup_state(services, key, job.state, job.status_message, job.recovery_point_arn)
    release_lease_kept_for(services, holder.instance_id, holder.run_id, holder.backup_job_id)
    return services.store.acquire_lease(lease, now_epoch)


def held_by(holder: Lease) -> str:
    """Why a run skips an instance another run holds."""
    held = f"instance is held by run {holder.run_id}"
    if holder.backup_job_id:
        return f"{held} until its backup job {holder.backup_job_id} ends"
    return held


# -- the reconciler asks AWS (each phase declares which of these it polls with) ------------


def poll_scripts(
    services: Services, members: list[InstanceRecord], phase: Phase, memo: PassMemo
) -> None:
    """One ListCommandInvocations per command (up to 50 instances), not one call per
    member; a member whose command id was never recorded is left to its resumption."""
    by_command: dict[str, list[InstanceRecord]] = {}
    for member in members:
        command_id = member.phase(phase).command_id
        if command_id:
            by_command.setdefault(command_id, []).append(member)
    for command_id, waiting in by_command.items():
        invocations = services.ssm.invocations(command_id)
        for member in waiting:
            found = invocations.get(member.instance_id)
            if found is not None:
                key = (member.run_id, member.group_id, member.instance_id)
                record_script_status(services, key, phase, *found)


def poll_power_states(
    services: Services, members: list[InstanceRecord], phase: Phase, memo: PassMemo
) -> None:
    record_power_states(services, members)


def record_power_states(services: Services, members: list[InstanceRecord]) -> None:
    """Ask EC2 the state of `members` in one call and record each as its event would be:
    arrived (the stop or start succeeded), gone (terminated: absent from the answer, as
    InvalidInstanceID.NotFound), or on the way (nothing changes; the call is retried)."""
    if not members:
        return
    states = services.ec2.states([member.instance_id for member in members])
    for member in members:
        key = (member.run_id, member.group_id, member.instance_id)
        record_power_state(services, key, states.get(member.instance_id, "terminated"))


def poll_backup_jobs(
    services: Services, members: list[InstanceRecord], phase: Phase, memo: PassMemo
) -> None:
    """The run's jobs as ListBackupJobs pages them (a thousand a call), listed once per
    reconciler pass for all the run's parts (`memo`), so that a long backup costs a few
    calls per pass, not one per member; a job the listing does not show (yet) is
    described alone."""
    waiting = [m for m in members if m.phase(phase).backup_job_id]
    if not waiting:
        return
    jobs = memo.get(("backup-jobs", waiting[0].run_id))
    if jobs is None:
        run = services.store.get_run(waiting[0].run_id)
        if run is None:
            return
        vault = RunInput.model_validate_json(run.input_json).backup_details.backup_vault_name
        jobs = services.backup.jobs_created_after(vault, parse_iso(run.created_at))
        memo[("backup-jobs", waiting[0].run_id)] = jobs
    for member in waiting:
        result = member.phase(phase)
        job_id = result.backup_job_id or ""
        job = jobs.get(job_id) or services.backup.describe_job(job_id)
        key = (member.run_id, member.group_id, member.instance_id)
        record_backup_state(
            services, key, job.state, job.status_message, job.recovery_point_arn,
            released=result.released_at is not None, backup_type=job.backup_type,
            check_label=bool(result.release_reason or result.windows_vss),
        )  # fmt: skip


# -- the events -------------------------------------------------------------------------------


def script_invocation_changed(services: Services, event: SsmInvocationEvent) -> None:
    detail = event.detail
    if decisions.ssm_outcome(detail.status) is None:
        return
    command = services.store.get_command(detail.command_id)
    if command is not None:
        run_id, group_id, phase = command["run_id"], command["group_id"], Phase(command["phase"])
    else:
        adopted = adopt_command(services, detail.command_id, detail.instance_id)
        if adopted is None:
            if _script_awaiting_its_command_id(services, detail.instance_id):
                # SSM does not list the command yet: retry rather than drop the report.
                raise CorrelationPendingError(f"command {detail.command_id} not recorded yet")
            observability.logger().info("not a command of this app", command_id=detail.command_id)
            return
        run_id, group_id, phase = adopted
    observability.bind_run(run_id)
    record_script_status(services, (run_id, group_id, detail.instance_id), phase, detail.status)


def instance_state_changed(services: Services, event: Ec2StateEvent) -> None:
    detail = event.detail
    lease = services.store.get_lease(detail.instance_id)
    if lease is None:
        observability.logger().info(
            "not an instance of any run", instance_id=detail.instance_id, state=detail.state
        )
        return
    observability.bind_run(lease.run_id)
    record_power_state(services, (lease.run_id, lease.group_id, detail.instance_id), detail.state)


def backup_job_changed(services: Services, event: BackupJobEvent) -> None:
    detail = event.detail
    if declared(Phase.BACKUP).ends_on(detail.state) is None:
        return
    job = services.store.get_job(detail.backup_job_id)
    if job is None:
        if _backup_awaiting_its_job_id(services, detail.resource_arn):
            # Started jobs are recorded a few at a time: retry rather than drop the report.
            raise CorrelationPendingError(f"backup job {detail.backup_job_id} not recorded yet")
        observability.logger().info("not a job of this app", backup_job_id=detail.backup_job_id)
        return
    observability.bind_run(job["run_id"])
    # The recovery point of a completed job is the event's resource (AWS's sample).
    recovery_point = detail.recovery_point_arn or (event.resources[0] if event.resources else None)
    key = (job["run_id"], job["group_id"], job["instance_id"])
    record_backup_state(
        services, key, detail.state, detail.status_message, recovery_point,
        released=bool(job.get("at_capture")),
        check_label=bool(job.get(capture.UNCAPTURED) or job.get("windows_vss")),
    )  # fmt: skip


def _script_awaiting_its_command_id(services: Services, instance_id: str) -> bool:
    instance = leased_instance(services, instance_id)
    if instance is None:
        return False
    return any(_awaits_command_id(instance, p) for p in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT))


def _backup_awaiting_its_job_id(services: Services, resource_arn: str | None) -> bool:
    """Whether the job's resource is an instance whose run started its backup and has
    not recorded the job yet."""
    if not resource_arn or ":instance/" not in resource_arn:
        return False
    instance = leased_instance(services, resource_arn.rsplit("/", 1)[-1])
    if instance is None:
        return False
    result = instance.phases.get(Phase.BACKUP)
    return (
        result is not None and result.status is PhaseStatus.IN_PROGRESS and not result.backup_job_id
    )


def _awaits_command_id(instance: InstanceRecord, phase: Phase) -> bool:
    result = instance.phases.get(phase)
    return result is not None and result.status is PhaseStatus.IN_PROGRESS and not result.command_id
