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

from chalicelib import observability
from chalicelib.clock import iso
from chalicelib.dependencies import Services
from chalicelib.logic.phase_table import PHASES
from chalicelib.logic.transitions import finish
from chalicelib.models.events import CancelRequest
from chalicelib.models.state import (
    GroupPhaseState,
    GroupRecord,
    Phase,
    PhaseStatus,
    RunRecord,
    RunStatus,
)


def cancel_run(services: Services, request: CancelRequest) -> None:
    """Cancel the run now if it is RUNNING, else keep the cancel until it is."""
    log = observability.logger()
    observability.bind_run(request.run_id)
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
    if store.cancel_run(request.run_id, request.reason):
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
    """Cancel every group of a cancelled run (again: each step is idempotent)."""
    for group in services.store.list_groups(run_id):
        _cancel_group(services, group)


def _cancel_group(services: Services, group: GroupRecord) -> None:
    store, run_id = services.store, group.run_id
    if not group.cancelled:
        store.cancel_group(run_id, group.group_id)
    if group.phase_state is not GroupPhaseState.OPEN or not PHASES[Phase(group.phase)].forward:
        return  # a requested forward phase will skip its work; backward ones go on
    phase = Phase(group.phase)
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
