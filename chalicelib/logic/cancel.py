"""Cancellation: no more forward side effects; the compensation still runs.

Forward phases (pre-script, stop, backup) are not started any more, and members still
waiting in one end as FAILED with the reason. The backward phases (start what the run
stopped, thaw what it froze) go on as usual, and the run ends CANCELLED.

A cancel may come before its run is RUNNING (reordered ahead of the start event, or while
the start handler is retried): it is kept beside the run, and whichever of the two handlers
comes second applies it. The start handler looks for it after it made the run RUNNING; the
cancel handler reads the run again after it kept it. Applying is idempotent, so both may.
"""

from __future__ import annotations

from datetime import timedelta

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.dependencies import Services
from chalicelib.errors import GatewayError
from chalicelib.gateways.backup import TERMINAL_JOB_STATES
from chalicelib.logic import decisions, side_effects
from chalicelib.logic.phase_table import PHASES
from chalicelib.logic.results import record_backup_state
from chalicelib.logic.transitions import finish
from chalicelib.models.events import CancelRequest, DetailType
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseStatus,
    RunRecord,
    RunStatus,
    StartedJob,
)


def cancel_run(services: Services, request: CancelRequest) -> None:
    """Cancel the run now if it is RUNNING, else keep the cancel until it is."""
    log = observability.logger()
    observability.bind_run(request.run_id)
    if request.group_id is not None:
        cancel_one_group(services, request.run_id, request.group_id)
        return
    run = services.store.get_run(request.run_id)
    if _not_running_yet(run):
        run = _keep(services, request)
    if run is not None and run.status is RunStatus.RUNNING:
        apply_cancel(services, request)
    elif _not_running_yet(run):
        log.warning("cancel kept until the run is running", reason=request.reason)
    else:
        assert run is not None
        log.warning("cancel ignored: the run is not running", status=run.status)


def apply_pending_cancel(services: Services, run_id: str) -> bool:
    """Apply the cancel kept for a run that was just made RUNNING, if there is one (the
    start handler, and each path that resumes a start); whether there was one."""
    request = services.store.pending_cancel(run_id)
    if request is None:
        return False
    apply_cancel(services, request)
    return True


def apply_cancel(services: Services, request: CancelRequest) -> None:
    """Cancel a RUNNING run and each of its groups. Idempotent: a handler that died half-way
    is finished by Lambda's retry, or by the start handler applying a kept cancel."""
    store, log = services.store, observability.logger()
    if store.cancel_run(request.run_id, iso(services.clock.now()), request.reason):
        log.warning("run cancelled", reason=request.reason)
        observability.count("RunsCancelled")
    else:
        run = store.get_run(request.run_id)
        if run is None or run.status is not RunStatus.RUNNING:
            status = run.status if run is not None else None
            log.warning("cancel ignored: the run is not running", status=status)
            return
        log.info("run already cancelled; cancelling its groups again")
    cancel_groups(services, request.run_id)


def cancel_groups(services: Services, run_id: str) -> None:
    """Cancel every group of a cancelled run (again: each step is idempotent). Every group
    is marked before any phase is ended: ending one puts events, which may fail. Groups
    in a forward phase are ended here up to one part's worth of members (the setting
    `group_part_size`: what one invocation works on); the others
    each get a cancel event of their own (one invocation per group, whatever the fleet),
    and are due soon, for the reconciler to end them should the event be lost."""
    store = services.store
    groups = store.list_groups(run_id)
    for group in groups:
        if not group.cancelled:
            store.cancel_group(run_id, group.group_id)
    acting = [group for group in groups if _in_forward_phase(group)]
    inline: list[GroupRecord] = []
    members = 0
    for group in acting:
        if members + group.size > services.settings.group_part_size and inline:
            break
        inline.append(group)
        members += group.size
    fanned = acting[len(inline) :]
    soon = services.now_epoch() + decisions.REQUEST_GRACE_SECONDS
    for group in fanned:
        store.rearm(run_id, group.group_id, group.phase, soon)
    if fanned:
        services.events.emit(
            [
                (DetailType.CANCEL_REQUESTED, {"run_id": run_id, "group_id": group.group_id})
                for group in fanned
            ]
        )
    for group in inline:
        _cancel_group(services, group)


def cancel_one_group(services: Services, run_id: str, group_id: str) -> None:
    """End the forward phase of one group of a cancelled run (its fanned-out event, or the
    reconciler)."""
    run = services.store.get_run(run_id)
    group = services.store.get_group(run_id, group_id)
    if run is None or group is None or not run.cancelled or run.status is not RunStatus.RUNNING:
        observability.logger().info("group cancel ignored: its run is not cancelled")
        return
    _cancel_group(services, group)


def _in_forward_phase(group: GroupRecord) -> bool:
    """Whether a group has forward work to end: an OPEN forward phase, or backup jobs of
    members it released at capture that still run (a backup is forward work)."""
    if group.jobs_pending > 0:
        return True
    return group.phase_state is GroupPhaseState.OPEN and PHASES[Phase(group.phase)].forward


def _cancel_group(services: Services, group: GroupRecord) -> None:
    store, run_id = services.store, group.run_id
    if not _in_forward_phase(group):
        return  # a requested forward phase will skip its work; backward ones go on
    if group.jobs_pending > 0:
        # Released at capture, started and thawed: only their jobs are left to stop.
        stop_backup_jobs(services, run_id, group.group_id, released_only=True)
    if group.phase_state is not GroupPhaseState.OPEN or not PHASES[Phase(group.phase)].forward:
        return
    phase = Phase(group.phase)
    if phase is Phase.BACKUP:
        stop_backup_jobs(services, run_id, group.group_id)
    if phase is Phase.PRE_SCRIPT:
        side_effects.adopt_unrecorded(services, group, phase)
    for member in store.list_instances(run_id, group.group_id):
        if member.phase(phase).status is PhaseStatus.IN_PROGRESS:
            finish(
                services, run_id, group.group_id, member.instance_id, phase,
                PhaseStatus.FAILED, reason="run cancelled",
            )  # fmt: skip


def _not_running_yet(run: RunRecord | None) -> bool:
    return run is None or run.status is RunStatus.STARTING


def _keep(services: Services, request: CancelRequest) -> RunRecord | None:
    """Keep the cancel for the handler that will make the run RUNNING, then read the run
    again: if that handler activated it meanwhile, it may have looked before the cancel
    was kept, so this one must apply it."""
    at, now_epoch = iso(services.clock.now()), services.now_epoch()
    if services.store.keep_cancel(request, at, now_epoch):
        observability.logger().info("cancel kept for a run not running yet")
    return services.store.get_run(request.run_id)


# -- cancelled during BACKUP: stop the jobs -----------------------------------------------------


def stop_backup_jobs(
    services: Services, run_id: str, group_id: str, released_only: bool = False
) -> None:
    """A group cancelled while OPEN in BACKUP: stop each running member's job, so that it
    does not capture an instance the run is about to start and thaw, then fail the member
    at once, so the group goes on (start, thaw). A job that turns out to be over already
    is recorded as it ended. What a stop cannot prevent (a job that completes anyway) is
    relabelled when it reports, and the instance's lease is kept until then (finalize).
    `released_only`: the jobs of members released at capture (the group went on)."""
    run = services.store.get_run(run_id)
    if run is None:
        return
    vault = RunInput.model_validate_json(run.input_json).backup_details.backup_vault_name
    for member in services.store.list_instances(run_id, group_id):
        if member.phase(Phase.BACKUP).status is not PhaseStatus.IN_PROGRESS:
            continue
        if released_only and member.phase(Phase.BACKUP).released_at is None:
            continue
        job_id = member.phase(Phase.BACKUP).backup_job_id or _unrecorded_job(
            services, member, vault
        )
        if job_id is not None and _stop_job(services, member, job_id):
            continue  # the job had ended: its own state was recorded
        finish(
            services, run_id, group_id, member.instance_id, Phase.BACKUP,
            PhaseStatus.FAILED, reason="run cancelled",
        )  # fmt: skip


def _unrecorded_job(services: Services, member: InstanceRecord, vault: str) -> str | None:
    """The job of a member whose StartBackupJob went through but whose handler died before
    recording the job id; recorded now, so that its reports and its lease find it."""
    started = member.phase(Phase.BACKUP).started_at
    if member.arn is None or started is None:
        return None
    try:
        # `started_at` is kept to the second; the job was created at that second or after.
        after = parse_iso(started) - timedelta(seconds=1)
        job_id = services.backup.find_job(member.arn, vault, after)
    except GatewayError as exc:
        observability.logger().warning(
            "could not look for an unrecorded backup job", instance_id=member.instance_id,
            error=str(exc),
        )  # fmt: skip
        return None
    if job_id is not None:
        services.store.record_jobs(
            member.run_id, member.group_id, [StartedJob(member.instance_id, job_id, {})],
            services.now_epoch(),
        )  # fmt: skip
    return job_id


def _stop_job(services: Services, member: InstanceRecord, job_id: str) -> bool:
    """StopBackupJob; True if the job had ended already (its state is then recorded)."""
    log = observability.logger()
    try:
        services.backup.stop_job(job_id)
        log.warning("backup job stopped", instance_id=member.instance_id, backup_job_id=job_id)
        return False
    except GatewayError as refused:
        try:
            job = services.backup.describe_job(job_id)
        except GatewayError as exc:
            log.error("backup job neither stopped nor described", backup_job_id=job_id,
                      stop_error=str(refused), error=str(exc))  # fmt: skip
            return False
        if job.state not in TERMINAL_JOB_STATES:
            # Its lease is kept until it ends; its recovery point relabelled if it completes.
            log.error("backup job could not be stopped", instance_id=member.instance_id,
                      backup_job_id=job_id, state=job.state, error=str(refused))  # fmt: skip
            return False
    key = (member.run_id, member.group_id, member.instance_id)
    record_backup_state(services, key, job.state, job.status_message, job.recovery_point_arn)
    return True
