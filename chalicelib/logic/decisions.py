"""Pure decisions: given the state and what happened, what follows. No AWS here."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from chalicelib.logic.phase_declaration import declared
from chalicelib.models.run_input import OnPreScriptFailure, RunInput, ScriptDetails
from chalicelib.models.state import (
    PHASE_ORDER,
    Consistency,
    InstanceRecord,
    InstanceStatus,
    Phase,
    PhaseStatus,
    RunStatus,
)
from chalicelib.models.targets import TargetInstance

# EC2 states in which SSM can reach the instance and which the run may stop.
RUNNING_STATES = frozenset({"running", "pending"})
GONE_STATES = frozenset({"shutting-down", "terminated"})

# SSM invocation statuses. Only Success counts; every other terminal status is a failure.
SSM_SUCCESS = "Success"
SSM_IN_FLIGHT = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
# Backup job states. Only COMPLETED counts.
BACKUP_SUCCESS = "COMPLETED"
BACKUP_FAILURES = frozenset({"FAILED", "ABORTED", "EXPIRED", "PARTIAL"})

_TOKEN_NAMESPACE = uuid.UUID("5b0c1f0e-6d55-4f36-9a3e-8f2b9d7f4a11")


def run_id_for(event_id: str, event_time: datetime) -> str:
    """A sortable run id, the same for every delivery of one start event."""
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:10]
    return f"{event_time.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def slot_run_id(profile: str, slot: datetime) -> str:
    """The run id of a profile's scheduled slot: however many ticks or start events
    name the slot, it is one run."""
    moment = slot.astimezone(UTC)
    return run_id_for(f"profile/{profile}/{moment.isoformat()}", moment)


def idempotency_token(run_id: str, instance_id: str) -> str:
    """StartBackupJob's token: one backup job per instance per run, whatever retries."""
    return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{run_id}/{instance_id}"))


def script_output_prefix(key_prefix: str | None, run_id: str, phase: Phase) -> str:
    """Where a script phase's output goes in its output bucket: `OutputS3KeyPrefix/run/phase`
    (SSM adds the command id and the instance id below it)."""
    return "/".join(part for part in (key_prefix, run_id, phase.lower()) if part)


def plan(run_input: RunInput) -> list[Phase]:
    """The phases of a run, in order, leaving out those its declaration does not include."""
    return [phase for phase in PHASE_ORDER if declared(phase).in_plan(run_input)]


def next_phase(phases: list[Phase], current: Phase) -> Phase | None:
    position = phases.index(current)
    return phases[position + 1] if position + 1 < len(phases) else None


# How often the reconciler looks at a part waiting at its group's barrier: only a safety
# net, as the last part to arrive releases the others (and stays due until it has).
WAITING_LOOK_SECONDS = 2 * 3600


def previous_phase(phases: list[Phase], current: Phase) -> Phase | None:
    position = phases.index(current)
    return phases[position - 1] if position > 0 else None


def group_of(target: TargetInstance, group_by: str) -> tuple[str, str]:
    """The coordination group of an instance: (group id, human label).

    One group for the run (the seed's behaviour), one per instance, or one per value of
    a tag (consistency groups). Ids are stable and safe inside a table key.
    """
    if group_by == "run":
        return "run", "run"
    if group_by == "instance":
        return target.instance_id, target.instance_id
    tag_key = group_by.removeprefix("tag:")
    value = target.tags.get(tag_key)
    label = f"{tag_key}={value}" if value is not None else f"{tag_key} (untagged)"
    return "t" + hashlib.sha256(label.encode()).hexdigest()[:12], label


@dataclass(frozen=True)
class Part:
    """One part of a coordination group: the unit that a phase handler, the reconciler
    and finalization each work on in one invocation, so that none grows with the fleet."""

    group_id: str  # the part's own id (the group's, when the group is one part)
    label: str
    instance_ids: tuple[str, ...]
    barrier: str | None  # the group's id when it has several parts, which move together


def parts_of(group_id: str, label: str, instance_ids: list[str], part_size: int) -> list[Part]:
    """Split a coordination group into parts of at most `part_size` members, by instance
    id. A group that fits is one part with its own id and no barrier (as before parts
    existed); a larger one has parts `<group id>.<n>` that meet at a barrier named after
    the group between phases, so that the group's phases stay barriers."""
    ordered = sorted(instance_ids)
    if len(ordered) <= part_size:
        return [Part(group_id, label, tuple(ordered), None)]
    slices = [ordered[n : n + part_size] for n in range(0, len(ordered), part_size)]
    return [
        Part(f"{group_id}.{n}", f"{label} (part {n + 1} of {len(slices)})", tuple(ids), group_id)
        for n, ids in enumerate(slices)
    ]


@dataclass(frozen=True)
class SkipAtStart:
    reason: str
    is_error: bool


def skip_at_start(target: TargetInstance | None) -> SkipAtStart | None:
    """Why an instance takes no part in the run at all, if it does not."""
    if target is None:
        return SkipAtStart("instance not found in this account and region", is_error=True)
    if target.state in GONE_STATES:
        return SkipAtStart(f"instance is {target.state}", is_error=False)
    return None


@dataclass(frozen=True)
class MemberDecision:
    act: bool
    reason: str | None = None


ACT = MemberDecision(act=True)
ABORTED = MemberDecision(False, "a pre-script of this group failed and OnPreScriptFailure is abort")

# Which members a phase acts on, once the rules common to every phase (a terminated
# instance, a cancelled run) have let them through: each phase declares one of these.


def pre_script_member(
    instance: InstanceRecord, aborted: bool, run_input: RunInput
) -> MemberDecision:
    if instance.original_state not in RUNNING_STATES:
        return MemberDecision(False, "instance was not running; SSM cannot reach it")
    return ACT


def stop_member(instance: InstanceRecord, aborted: bool, run_input: RunInput) -> MemberDecision:
    if aborted:
        return ABORTED
    if instance.original_state not in RUNNING_STATES:
        return MemberDecision(False, f"instance was already {instance.original_state}")
    return ACT


def backup_member(instance: InstanceRecord, aborted: bool, run_input: RunInput) -> MemberDecision:
    if aborted:
        return ABORTED
    stop = instance.phase(Phase.STOP)
    if stop.status is PhaseStatus.FAILED and (
        run_input.on_pre_script_failure is OnPreScriptFailure.ABORT
    ):
        return MemberDecision(False, "the stop failed and OnPreScriptFailure is abort")
    return ACT


def start_member(instance: InstanceRecord, aborted: bool, run_input: RunInput) -> MemberDecision:
    stop = instance.phase(Phase.STOP)
    # A stop that was tried may have stopped the instance even if it never said so:
    # sent but unreported, or made by a handler that died before recording it (then
    # timed out or cancelled). Start it to be sure; starting a running instance
    # changes nothing. Only a stop never tried, or refused by EC2, stopped nothing.
    never = stop.started_at is None or stop.refused
    if stop.status is not PhaseStatus.SUCCEEDED and not stop.sent and never:
        return MemberDecision(False, "this run did not stop the instance")
    return ACT


def post_script_member(
    instance: InstanceRecord, aborted: bool, run_input: RunInput
) -> MemberDecision:
    """Always thaw where the pre-script was sent."""
    if run_input.pre_script is not None:
        pre = instance.phase(Phase.PRE_SCRIPT)
        if pre.status in (PhaseStatus.SKIPPED, PhaseStatus.PENDING):
            return MemberDecision(False, "no pre-script was sent to this instance")
    elif instance.original_state not in RUNNING_STATES:
        return MemberDecision(False, "instance was not running; SSM cannot reach it")
    # Sent even to an instance left stopped: SSM delivers it if the instance is started
    # within the delivery timeout, and otherwise reports it Undeliverable, not hidden.
    return ACT


def ssm_outcome(status: str) -> PhaseStatus | None:
    """The phase status an SSM invocation status means; None while it is in flight."""
    if status in SSM_IN_FLIGHT:
        return None
    return PhaseStatus.SUCCEEDED if status == SSM_SUCCESS else PhaseStatus.FAILED


def backup_outcome(state: str) -> PhaseStatus | None:
    """The phase status a backup job state means; None while the job is not terminal."""
    if state == BACKUP_SUCCESS:
        return PhaseStatus.SUCCEEDED
    if state in BACKUP_FAILURES:
        return PhaseStatus.FAILED
    return None


def consistency(instance: InstanceRecord, run_input: RunInput) -> Consistency:
    """What a backup taken now really is.

    A failed pre-script always means crash-consistent. Otherwise a successful pre-script,
    or an instance powered off (stopped by the run or before it), is app-consistent.
    """
    if run_input.pre_script is not None and instance.original_state in RUNNING_STATES:
        if instance.phase(Phase.PRE_SCRIPT).status is not PhaseStatus.SUCCEEDED:
            return Consistency.CRASH
        return Consistency.APP
    powered_off = (
        instance.original_state not in RUNNING_STATES
        or instance.phase(Phase.STOP).status is PhaseStatus.SUCCEEDED
    )
    return Consistency.APP if powered_off else Consistency.CRASH


def aborts_group(run_input: RunInput, pre_script_failures: int) -> bool:
    return run_input.on_pre_script_failure is OnPreScriptFailure.ABORT and pre_script_failures > 0


def instance_outcome(
    instance: InstanceRecord, phases: list[Phase]
) -> tuple[InstanceStatus, str | None]:
    """The final status of one instance, with the reason when it is not SUCCEEDED."""
    if instance.status is InstanceStatus.SKIPPED:
        return InstanceStatus.SKIPPED, instance.reason
    if instance.terminated:  # gone, not stuck: nothing is left to start or thaw
        lost = "; ".join(
            f"{p}: {instance.phase(p).reason}"
            for p in phases
            if instance.phase(p).status is PhaseStatus.FAILED
        )
        return InstanceStatus.FAILED, "instance terminated during the run" + (
            f" ({lost})" if lost else ""
        )
    start = instance.phase(Phase.START)
    if Phase.START in phases and start.status is PhaseStatus.FAILED:
        return InstanceStatus.STUCK_STOPPED, f"START: {start.reason}"
    backup = instance.phase(Phase.BACKUP)
    if backup.status is not PhaseStatus.SUCCEEDED:
        return InstanceStatus.FAILED, f"BACKUP: {backup.reason or backup.status}"
    failed = [p for p in phases if instance.phase(p).status is PhaseStatus.FAILED]
    if failed:
        reasons = "; ".join(f"{p}: {instance.phase(p).reason}" for p in failed)
        return InstanceStatus.COMPLETED_WITH_ERRORS, reasons
    pre_sent = instance.phase(Phase.PRE_SCRIPT).status in (
        PhaseStatus.SUCCEEDED,
        PhaseStatus.FAILED,
    )
    post = instance.phase(Phase.POST_SCRIPT)
    if Phase.POST_SCRIPT in phases and pre_sent and post.status is PhaseStatus.SKIPPED:
        return InstanceStatus.COMPLETED_WITH_ERRORS, f"POST_SCRIPT not sent: {post.reason}"
    return InstanceStatus.SUCCEEDED, None


def run_outcome(
    outcomes: list[tuple[InstanceRecord, InstanceStatus]], cancelled: bool = False
) -> tuple[RunStatus, str | None, dict[str, int]]:
    """The run's final status from its instances' final statuses."""
    counts = dict(Counter(str(status) for _, status in outcomes))
    if not outcomes:
        return RunStatus.FAILED, "no target instances were found", counts
    backed_up = sum(
        1 for record, _ in outcomes if record.phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    )
    if cancelled:
        return RunStatus.CANCELLED, "cancelled on request", counts
    timed_out = any(result.timed_out for record, _ in outcomes for result in record.phases.values())
    if backed_up == 0:
        if timed_out:
            return RunStatus.TIMED_OUT, "no instance was backed up; a phase timed out", counts
        return RunStatus.FAILED, "no instance was backed up", counts
    clean = all(
        status is InstanceStatus.SUCCEEDED
        or (status is InstanceStatus.SKIPPED and not record.skip_is_error)
        for record, status in outcomes
    )
    if clean:
        return RunStatus.SUCCEEDED, None, counts
    return RunStatus.COMPLETED_WITH_ERRORS, "some instances did not fully succeed", counts


STOP_START_BUDGET_SECONDS = 15 * 60
DEFAULT_COMPLETE_WINDOW_SECONDS = 8 * 3600
DEFAULT_DELIVERY_TIMEOUT_SECONDS = 3600
SCRIPT_MARGIN_SECONDS = 5 * 60
# A requested phase, or a finished group, that no handler picked up by then is picked up by
# the reconciler (its event was lost, or its handler failed after Lambda's retries).
REQUEST_GRACE_SECONDS = 5 * 60
# How soon a side effect that AWS refused for now (throttling, capacity) is tried again.
RETRY_SECONDS = 5 * 60


def phase_budget_seconds(phase: Phase, run_input: RunInput) -> int:
    """How long a phase may take before its unfinished members are timed out."""
    return declared(phase).budget_seconds(run_input)


def script_budget_seconds(script: ScriptDetails | None) -> int:
    if script is None:
        return 0
    # SSM's own limit: the delivery timeout plus the execution timeout.
    delivery = script.timeout_in_seconds or DEFAULT_DELIVERY_TIMEOUT_SECONDS
    return delivery + script.execution_timeout_in_seconds + SCRIPT_MARGIN_SECONDS


def backup_budget_seconds(run_input: RunInput) -> int:
    backup = run_input.backup_details
    # The complete window counts from when the job was scheduled, not after the start.
    if backup.complete_window_minutes:
        return backup.complete_window_minutes * 60
    return backup.start_window_minutes * 60 + DEFAULT_COMPLETE_WINDOW_SECONDS


def run_budget_seconds(run_input: RunInput) -> int:
    """How long a run may take at most: its phases' budgets and the reconciler's delays."""
    return sum(
        phase_budget_seconds(phase, run_input)
        + REQUEST_GRACE_SECONDS
        + declared(phase).poll_seconds
        for phase in plan(run_input)
    )


def tallies_of(group_ids: list[str], per_tally: int) -> dict[str, int]:
    """The tally counting each group, for a run of more than `per_tally` groups (the
    setting `tally_groups`), dealt round so that groups that finish together spread over
    the tallies; {} for fewer: the run header counts them itself."""
    if len(group_ids) <= per_tally:
        return {}
    count = -(-len(group_ids) // per_tally)
    return {group_id: n % count for n, group_id in enumerate(sorted(group_ids))}
