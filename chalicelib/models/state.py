"""What the state table holds: run header, groups, one item per instance, leases.

Items are small and bounded: nothing here grows with the size of the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Phase(StrEnum):
    PRE_SCRIPT = "PRE_SCRIPT"
    STOP = "STOP"
    BACKUP = "BACKUP"
    START = "START"
    POST_SCRIPT = "POST_SCRIPT"


PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)
DONE = "DONE"


class PhaseStatus(StrEnum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class RunStatus(StrEnum):
    STARTING = "STARTING"  # claimed by a start handler; targets and groups being written
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    MISSED = "MISSED"  # a scheduled slot that was not run (too late, or superseded)


class InstanceStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    STUCK_STOPPED = "STUCK_STOPPED"
    SKIPPED = "SKIPPED"


class Consistency(StrEnum):
    APP = "app-consistent"
    CRASH = "crash-consistent"


class GroupPhaseState(StrEnum):
    # A part of a large group finished its previous phase and waits at the group's
    # barrier for the other parts (`BarrierRecord`) before it enters this one.
    WAITING = "WAITING"
    REQUESTED = "REQUESTED"  # the group entered the phase; its side effects are not sent yet
    OPEN = "OPEN"  # side effects sent; waiting for every member to be terminal
    DONE = "DONE"  # the group went through its last phase


class _Record(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore")


class PhaseResult(_Record):
    """One instance's result for one phase."""

    status: PhaseStatus = PhaseStatus.PENDING
    reason: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    command_id: str | None = None  # scripts
    backup_job_id: str | None = None  # backup
    recovery_point_arn: str | None = None  # backup
    consistency: Consistency | None = None  # backup
    timed_out: bool | None = None  # no result by the phase's deadline
    sent: bool | None = None  # the side effect was made and recorded
    refused: bool | None = None  # AWS refused the side effect outright: it did not happen
    last_error: str | None = None  # why the side effect has not been made yet (retried)
    last_error_code: str | None = None  # its AWS error code (`logic/transient.py`)
    retries: int | None = None  # how many times AWS refused it for now (the backoff)
    late_report: str | None = None  # a report that came after the phase had ended otherwise
    job_state: str | None = None  # backup: the terminal state AWS reported for the job
    # Release at capture (backup; `logic/capture.py`): the EBS volumes attached while the
    # instance was frozen or stopped, the snapshots of them its job's image lists, when the
    # last of them was initiated (the moment the data was captured), when the group let it
    # go (started, thawed) while its job went on, and, if that was before its capture (the
    # freeze budget ran out), why.
    volumes: list[str] | None = None
    snapshot_ids: list[str] | None = None
    captured_at: str | None = None
    released_at: str | None = None
    release_reason: str | None = None
    windows_vss: bool | None = None  # asked for a Windows VSS backup (BackupOptions)
    backup_type: str | None = None  # what the completed job reports ("WindowsVSS")


class InstanceRecord(_Record):
    run_id: str
    group_id: str
    instance_id: str
    arn: str | None = None
    original_state: str
    status: InstanceStatus = InstanceStatus.IN_PROGRESS
    reason: str | None = None
    skip_is_error: bool = False
    terminated: bool = False
    group_label: str | None = None
    phases: dict[Phase, PhaseResult] = Field(default_factory=dict)

    def phase(self, phase: Phase) -> PhaseResult:
        return self.phases.get(phase) or PhaseResult(status=PhaseStatus.SKIPPED)


class GroupRecord(_Record):
    run_id: str
    group_id: str
    label: str
    size: int
    phase: str  # a Phase, or DONE
    phase_state: GroupPhaseState
    pending: int = 0
    aborted: bool = False
    deadline: int | None = None  # epoch seconds by which the current phase must be over
    due_at: int | None = None  # epoch seconds when the reconciler looks next
    claim_until: int | None = None  # a handler is making the phase's side effects until then
    cancelled: bool = False  # no more forward side effects; only the compensation
    finalized: bool = False
    tally: int | None = None  # the tally counting it, in a run of many groups
    # Release at capture (`logic/capture.py`): members released (captured, or let go at
    # the freeze budget) whose backup jobs still run, and by when those must end (the
    # BACKUP deadline); until when the group may stay frozen waiting for its capture
    # (None: no budget, stop mode); the capture polls made, and when the next is due.
    jobs_pending: int = 0
    jobs_deadline: int | None = None
    capture_until: int | None = None
    capture_polls: int = 0
    next_capture_poll: int | None = None
    counts: dict[str, int] = Field(default_factory=dict)  # "<PHASE>_<STATUS>" -> n
    # A part of a larger coordination group (`decisions.parts_of`): its parts go from
    # phase to phase together, through the barrier of that id; None for a whole group.
    barrier: str | None = None
    # Paced by calls (`pacing.py`): the StartBackupJob calls a second this part may make,
    # sharing the account's rate with the parts released with it; None: unpaced.
    calls_per_second: float | None = None
    # The reconciler put this REQUESTED group's Phase Requested again (its turn came, or
    # the event was lost); if it is still REQUESTED at the next look, the reconciler
    # enters the phase itself.
    requested_again: bool = False
    # The reconciler's failures on this item while it was due, and why it was set aside
    # (taken out of the due index) if it was: see `Store.note_due_failure`, `set_aside`.
    reconcile_failures: int = 0
    last_reconcile_error: str | None = None
    last_reconcile_failure_at: int | None = None  # epoch seconds
    set_aside_reason: str | None = None

    def count(self, phase: Phase, status: PhaseStatus) -> int:
        return self.counts.get(f"{phase}_{status}", 0)


class TallyRecord(_Record):
    """A share of a run's count of unfinished groups, for a run of many groups (one per
    instance): each group is counted out of its tally, and a tally out of the run header
    when its last group is, so that no item is written more than a few hundred times
    when thousands of groups finish together (`decisions.tallies_of`)."""

    run_id: str
    tally: int
    pending: int  # its groups not yet counted out
    closed: bool = False  # counted out of the run header


class BarrierRecord(_Record):
    """Where the parts of a large coordination group meet between phases: how many parts
    there are, how many finished each phase, and their members' results summed."""

    run_id: str
    barrier: str  # the coordination group's id
    label: str
    parts: int
    arrived: dict[str, int] = Field(default_factory=dict)  # phase -> parts that finished it
    counts: dict[str, int] = Field(default_factory=dict)  # "<PHASE>_<STATUS>" -> n

    def complete(self, phase: Phase) -> bool:
        return self.arrived.get(phase, 0) >= self.parts

    def count(self, phase: Phase, status: PhaseStatus) -> int:
        return self.counts.get(f"{phase}_{status}", 0)


class RunRecord(_Record):
    run_id: str
    status: RunStatus
    created_at: str
    finished_at: str | None = None
    event_id: str | None = None
    input_json: str = "null"  # the start event's detail, exactly as received
    errors: list[str] = Field(default_factory=list)
    reason: str | None = None
    plan: list[Phase] = Field(default_factory=list)
    groups_total: int = 0
    # What the run still waits for: its groups, or, with `tallies`, its open tallies.
    groups_pending: int = 0
    tallies: int = 0
    instance_count: int = 0
    counts: dict[str, int] = Field(default_factory=dict)  # InstanceStatus -> n
    cancelled: bool = False
    cancelled_at: str | None = None  # when the cancel flag was written
    notified_at: str | None = None  # when its summary went to the notification topic
    announced_at: str | None = None  # when its Run Completed event was put
    start_announced_at: str | None = None  # when its Run Started event was put
    profile: str | None = None  # the stored profile the run was started from, if any
    slot: str | None = None  # the scheduled slot it runs for, if the scheduler started it
    # As on a group: the reconciler's failures on the header while it was due.
    reconcile_failures: int = 0
    last_reconcile_error: str | None = None
    last_reconcile_failure_at: int | None = None  # epoch seconds
    set_aside_reason: str | None = None


class Lease(_Record):
    instance_id: str
    run_id: str
    group_id: str
    expires_at: int  # epoch seconds; also the table's TTL attribute
    # Set when the run ended while this backup job still ran: the lease is kept until the
    # job is terminal (AWS runs one backup job per resource at a time).
    backup_job_id: str | None = None


@dataclass(frozen=True)
class StartedJob:
    """A backup job started for one instance (not an item: the store writes its item and
    notes it on the instance's BACKUP result, with what `noted` adds: sent, label)."""

    instance_id: str
    backup_job_id: str
    noted: dict[str, Any]
