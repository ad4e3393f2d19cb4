"""Cancellation: no more forward side effects; the compensation still runs.

Forward phases (pre-script, stop, backup) are not started any more, and members still
waiting in one end as FAILED with the reason. The backward phases (start what the run
stopped, thaw what it froze) go on as usual, and the run ends CANCELLED.
"""

from __future__ import annotations

from chalicelib import observability
from chalicelib.dependencies import Services
from chalicelib.logic.phase_table import PHASES
from chalicelib.logic.transitions import finish
from chalicelib.models.events import CancelRequest
from chalicelib.models.state import GroupPhaseState, Phase, PhaseStatus


def cancel_run(services: Services, request: CancelRequest) -> None:
    log = observability.logger()
    observability.bind_run(request.run_id)
    store = services.store
    if not store.cancel_run(request.run_id):
        log.warning("cancel ignored: the run is not running", reason=request.reason)
        return
    log.warning("run cancelled", reason=request.reason)
    observability.count("RunsCancelled")
    for group in store.list_groups(request.run_id):
        store.cancel_group(request.run_id, group.group_id)
        if group.phase_state is not GroupPhaseState.OPEN or not PHASES[Phase(group.phase)].forward:
            continue  # a requested forward phase will skip its work; backward ones go on
        phase = Phase(group.phase)
        for member in store.list_instances(request.run_id, group.group_id):
            if member.phase(phase).status is PhaseStatus.IN_PROGRESS:
                finish(
                    services, request.run_id, group.group_id, member.instance_id, phase,
                    PhaseStatus.FAILED, reason="run cancelled",
                )  # fmt: skip
