"""A group is done; when it was the run's last, the run gets its final record."""

from __future__ import annotations

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.dependencies import Services
from chalicelib.errors import ContentionError
from chalicelib.logic import decisions
from chalicelib.logic.phase_declaration import declared
from chalicelib.models.events import DetailType, PhaseCompleted, RunCompleted
from chalicelib.models.state import (
    DONE,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    InstanceStatus,
    Phase,
    PhaseStatus,
    RunRecord,
    RunStatus,
)


def group_completed(services: Services, completed: PhaseCompleted) -> None:
    """Count the group out of its run, once; finalize the run after its last group."""
    if completed.next_phase != DONE:
        return
    observability.bind_run(completed.run_id)
    close_group(services, completed.run_id, completed.group_id)


def close_group(services: Services, run_id: str, group_id: str) -> None:
    """A group went through its last phase (reported by its event or the reconciler):
    its members get their final status and give their leases back, then the group is
    counted out of its run (so that no invocation works on more than one group's
    members, and a handler that dies before the count is repeated whole)."""
    before = services.store.get_run(run_id)
    group = services.store.get_group(run_id, group_id)
    if group is not None and not group.finalized and group.jobs_pending > 0:
        _await_jobs(services, group)
        return
    running = before is not None and before.status is RunStatus.RUNNING
    if before is not None and running and group is not None and not group.finalized:
        conclude_members(services, before, services.store.list_instances(run_id, group_id))
    if group is not None and group.tally is not None:
        _count_out_of_tally(services, before, group)
    else:
        if running and before is not None and before.groups_pending <= 1:
            _rearm_for_the_last(services, run_id)
        services.store.finish_group(run_id, group_id)  # once; a repeat changes nothing
    run = services.store.get_run(run_id)
    # Checked even after a repeat: the handler that counted the group out may have died.
    if run is not None and run.status is RunStatus.RUNNING and run.groups_pending <= 0:
        finalize_run(services, run)


def _await_jobs(services: Services, group: GroupRecord) -> None:
    """The group went through its phases, released at capture, while backup jobs of its
    members still run: it is done when the last of them ends (its report says so again,
    `transitions._finish_released`); until then the reconciler asks after them now and
    then, and times them out at the BACKUP deadline."""
    now = services.now_epoch()
    look = now + declared(Phase.BACKUP).poll_seconds
    due_at = min(look, group.jobs_deadline) if group.jobs_deadline else look
    services.store.rearm(group.run_id, group.group_id, DONE, max(due_at, now))
    observability.logger().info(
        "group done; waiting for its backup jobs", group_id=group.group_id,
        jobs_pending=group.jobs_pending,
    )  # fmt: skip


def _rearm_for_the_last(services: Services, run_id: str) -> None:
    """The last group: should this handler die once the group is counted out (the group
    is then no longer due), the reconciler finds the run due soon, not at the end of its
    budget hours later."""
    services.store.rearm_run(run_id, services.now_epoch() + decisions.REQUEST_GRACE_SECONDS)


def _count_out_of_tally(services: Services, run: RunRecord | None, group: GroupRecord) -> None:
    """Count a group of a run of many out of its tally, and the tally out of the run when
    this is its last group (one transaction either way). Two groups of one tally that
    finish together may both take themselves for not the last: the one whose count is
    refused reads the tally again and tries as what it is then."""
    store, tally = services.store, group.tally
    assert tally is not None
    for _ in range(3):
        current = store.get_tally(group.run_id, tally)
        last = current is not None and current.pending <= 1
        if last and run is not None and run.status is RunStatus.RUNNING and run.groups_pending <= 1:
            _rearm_for_the_last(services, group.run_id)
        if store.finish_group(group.run_id, group.group_id, tally, last_of_tally=last):
            return
        again = store.get_group(group.run_id, group.group_id)
        if again is None or again.finalized or again.phase_state is not GroupPhaseState.DONE:
            return  # counted out already (a repeat), or not done: nothing to count
    raise ContentionError(f"tally {tally} of run {group.run_id} kept changing; retried by Lambda")


def conclude_members(services: Services, run: RunRecord, members: list[InstanceRecord]) -> None:
    """Write each member's final status (where it changed) and give its lease back (or
    keep it for a backup job that may still run), in transactions. Idempotent: a repeat
    writes nothing new and releases nothing twice."""
    changed = []
    for instance in members:
        outcome, why = decisions.instance_outcome(instance, run.plan)
        if (outcome, why) != (instance.status, instance.reason):
            changed.append((instance.group_id, instance.instance_id, outcome, why))
            if outcome is InstanceStatus.STUCK_STOPPED:
                # This run stopped it and could not start it again: someone must act.
                observability.logger().error(
                    "instance left stopped", instance_id=instance.instance_id, reason=why
                )
                observability.count("InstancesStuckStopped")
    services.store.set_instance_outcomes(run.run_id, changed)
    kept = [instance for instance in members if job_may_run(instance)]
    released = [instance.instance_id for instance in members if not job_may_run(instance)]
    services.store.release_leases(released, run.run_id)
    for instance in kept:
        keep_lease_for_job(services, instance)


def finalize_run(services: Services, run: RunRecord) -> None:
    """The run's final status, from its instances' (each group concluded its members),
    then announce it."""
    store = services.store
    instances = store.list_instances(run.run_id)
    outcomes = [(i, decisions.instance_outcome(i, run.plan)[0]) for i in instances]
    status, reason, counts = decisions.run_outcome(outcomes, cancelled=run.cancelled)
    finished_at = iso(services.clock.now())
    if not store.complete_run(
        run.run_id, status, counts, reason, finished_at, announce_by(services)
    ):
        return
    observability.count(f"RUN_{status}")
    for outcome in InstanceStatus:  # the run's instances by outcome, counted with the run
        if counts.get(outcome.value):
            observability.count(f"INSTANCE_{outcome}", counts[outcome.value])
    duration = (parse_iso(finished_at) - parse_iso(run.created_at)).total_seconds()
    observability.seconds("RunDurationSeconds", duration)
    spans = phase_spans(instances)
    for phase in Phase:
        if phase in spans:
            observability.seconds(f"{phase}_DURATION_SECONDS", spans[phase])
    log = (
        observability.logger().info
        if status is RunStatus.SUCCEEDED
        else observability.logger().warning
    )
    log("run completed", status=status, reason=reason, counts=counts, duration_seconds=duration)
    update = {"status": status, "reason": reason, "counts": counts, "finished_at": finished_at}
    announce(services, run.model_copy(update=update))


def phase_spans(instances: list[InstanceRecord]) -> dict[Phase, float]:
    """Seconds from the first member's start of each phase to the last member's end, over
    the members that went through it (a member skipped has no start); phases none went
    through are left out."""
    spans = {}
    for phase in Phase:
        results = [instance.phases.get(phase) for instance in instances]
        times = [
            (parse_iso(result.started_at), parse_iso(result.ended_at))
            for result in results
            if result is not None and result.started_at and result.ended_at
        ]
        if times:
            first = min(started for started, _ in times)
            spans[phase] = (max(ended for _, ended in times) - first).total_seconds()
    return spans


def job_may_run(instance: InstanceRecord) -> bool:
    """Whether the instance's backup job may still run after its run: the phase ended by
    cancellation or timeout, and no terminal state of the job was reported."""
    backup = instance.phase(Phase.BACKUP)
    return (
        backup.backup_job_id is not None
        and backup.job_state is None
        and backup.status is not PhaseStatus.SUCCEEDED
    )


def keep_lease_for_job(services: Services, instance: InstanceRecord) -> None:
    """Keep the instance's lease, naming its job, until the job's terminal report
    releases it (or a later run finds the job over, or the lease's TTL runs out)."""
    store, job_id = services.store, instance.phase(Phase.BACKUP).backup_job_id or ""
    if not store.hold_lease_for_job(instance.instance_id, instance.run_id, job_id):
        return  # not this run's lease (any more)
    # The job's terminal report may have come between the read and the hold: it found no
    # lease kept for its job, so give the lease back here.
    again = store.get_instance(instance.run_id, instance.group_id, instance.instance_id)
    if again is not None and again.phase(Phase.BACKUP).job_state is not None:
        store.release_lease_after_job(instance.instance_id, instance.run_id, job_id)
        return
    observability.logger().warning(
        "lease kept until the backup job ends", instance_id=instance.instance_id,
        backup_job_id=job_id,
    )  # fmt: skip


def announce(services: Services, run: RunRecord) -> None:
    """Put the run's Run Completed event, then note it. Every path that ends a run writes
    its final record due by `announce_by` first, and the run stays due until it is noted:
    if EventBridge refuses the event or this handler dies first, the reconciler announces
    it (at least once)."""
    completed = RunCompleted.of(run).model_dump(mode="json")
    services.events.emit([(DetailType.RUN_COMPLETED, completed)])
    services.store.mark_announced(run.run_id, iso(services.clock.now()))


def announce_by(services: Services) -> int:
    """When the reconciler announces a finished run whose own handler could not."""
    return services.now_epoch() + decisions.REQUEST_GRACE_SECONDS
