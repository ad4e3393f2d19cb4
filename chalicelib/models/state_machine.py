"""The state machine of the state table, written once, as data.

Each transition of a run, group, instance, lease or profile is one function below that
returns what to write: the item's key, the precondition (`when`), and the updates, or, for
a write of several items that must happen together, the `Transaction` of them. Nothing
here does I/O. Two small interpreters run these definitions:

- `chalicelib/gateways/state_store.py` renders them as DynamoDB condition and update
  expressions, or as a `TransactWriteItems` request;
- `prepost/local/memory_store.py` applies them to plain dicts, with DynamoDB's semantics
  (a comparison with a missing attribute is false but `<>`, which is true; an update of a
  missing item creates it; a transaction writes all or nothing).

`chalicelib/store.py` holds the one implementation of the store's public methods over
either of them; `tests/property/test_store_contract.py` holds the two to the same results.

Item keys:
    RUN#<run_id>      RUN                          the run header
    RUN#<run_id>      GROUP#<group_id>             a group
    RUN#<run_id>      INST#<group_id>#<instance>   an instance of the run
    RUN#<run_id>      BARRIER#<group_id>           where the parts of a large group meet
    RUN#<run_id>      CANCEL                       a cancel kept until the run is RUNNING
    LEASE#<instance>  LEASE                        which run holds the instance
    CMD#<command_id>  CMD                          SSM command -> run, group, phase
    JOB#<job_id>      JOB                          backup job -> run, group, instance
    PROFILE           PROFILE#<name>               a stored profile (one partition: few)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from chalicelib.models.profile import Profile
from chalicelib.models.state import (
    DONE,
    BarrierRecord,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    InstanceStatus,
    Lease,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
    RunStatus,
    TallyRecord,
)

# -- keys ------------------------------------------------------------------------------------

PARTITION_KEY = "pk"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"
# The sparse index of what needs the reconciler's attention by a time: only the groups and
# run headers of active runs carry `due_pk` (and `due_at`), so a query reads what is due
# and nothing else. An item is in the index exactly when it has both attributes.
DUE_INDEX = "due"
DUE_PARTITION = "due_pk"
DUE_AT = "due_at"
DUE_VALUE = "DUE"
PROFILES = "PROFILE"  # the one partition of stored profiles
LAST_ERROR_CHARACTERS = 500  # of a reconciler failure kept on the item

Key = dict[str, str]


def run_key(run_id: str) -> Key:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: "RUN"}


def group_key(run_id: str, group_id: str) -> Key:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: f"GROUP#{group_id}"}


def instance_key(run_id: str, group_id: str, instance_id: str) -> Key:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: f"INST#{group_id}#{instance_id}"}


def barrier_key(run_id: str, barrier: str) -> Key:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: f"BARRIER#{barrier}"}


def tally_key(run_id: str, tally: int) -> Key:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: f"TALLY#{tally:05d}"}


def pending_cancel_key(run_id: str) -> Key:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: "CANCEL"}


def lease_key(instance_id: str) -> Key:
    return {PARTITION_KEY: f"LEASE#{instance_id}", SORT_KEY: "LEASE"}


def command_key(command_id: str) -> Key:
    return {PARTITION_KEY: f"CMD#{command_id}", SORT_KEY: "CMD"}


def job_key(backup_job_id: str) -> Key:
    return {PARTITION_KEY: f"JOB#{backup_job_id}", SORT_KEY: "JOB"}


def profile_key(name: str) -> Key:
    return {PARTITION_KEY: PROFILES, SORT_KEY: f"PROFILE#{name}"}


def due_key(run_id: str, group_id: str) -> Key:
    """The item that `due_items` names (run id, group id): the run header when the group
    id is empty, else the group."""
    return group_key(run_id, group_id) if group_id else run_key(run_id)


def due_entry(key: Key) -> tuple[str, str]:
    """The (run id, group id) of an item of the due index; the inverse of `due_key`."""
    sort_key = key[SORT_KEY]
    group_id = sort_key.removeprefix("GROUP#") if sort_key != "RUN" else ""
    return key[PARTITION_KEY].removeprefix("RUN#"), group_id


# -- the vocabulary: conditions and writes --------------------------------------------------
# A path is an attribute name, or names joined by dots into nested maps
# ("phases.BACKUP.status"); no attribute name of the table contains a dot.


@dataclass(frozen=True)
class Exists:
    path: str


@dataclass(frozen=True)
class Missing:
    path: str


@dataclass(frozen=True)
class Compare:
    path: str
    op: Literal["=", "<>", "<", "<="]
    value: Any


@dataclass(frozen=True)
class All:
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]


Condition = Exists | Missing | Compare | All | AnyOf
# An update without a precondition creates the item it names if it is missing (DynamoDB's
# UpdateItem): the transitions below that only mark an item require it to exist, so that
# a stray key never leaves a partial item that no record can be read from.


def eq(path: str, value: Any) -> Compare:
    return Compare(path, "=", _stored(value))


def ne(path: str, value: Any) -> Compare:
    return Compare(path, "<>", _stored(value))


def lt(path: str, value: Any) -> Compare:
    return Compare(path, "<", _stored(value))


def le(path: str, value: Any) -> Compare:
    return Compare(path, "<=", _stored(value))


def all_of(*parts: Condition) -> All:
    return All(parts)


def any_of(*parts: Condition) -> AnyOf:
    return AnyOf(parts)


@dataclass(frozen=True)
class Put:
    """Write a whole item (its key included), if `when` holds of the item it replaces."""

    item: dict[str, Any]
    when: Condition | None = None
    operation: ClassVar[str] = "PutItem"

    def __post_init__(self) -> None:
        stored = {k: _stored(v) for k, v in self.item.items() if v is not None}
        object.__setattr__(self, "item", stored)


@dataclass(frozen=True)
class Update:
    """Change attributes of the item at `key` (creating it if missing, as DynamoDB does),
    if `when` holds: `set` values, `add` to numbers (a missing one counts from 0), `remove`
    attributes. With `returns_new`, the write answers the item as it is afterwards."""

    key: Key
    set: dict[str, Any] = field(default_factory=dict)
    add: dict[str, int] = field(default_factory=dict)
    remove: tuple[str, ...] = ()
    when: Condition | None = None
    returns_new: bool = False
    operation: ClassVar[str] = "UpdateItem"

    def __post_init__(self) -> None:
        object.__setattr__(self, "set", {k: _stored(v) for k, v in self.set.items()})


@dataclass(frozen=True)
class Delete:
    """Delete the item at `key`, if `when` holds."""

    key: Key
    when: Condition | None = None
    operation: ClassVar[str] = "DeleteItem"


@dataclass(frozen=True)
class Transaction:
    """Writes of several items that happen together or not at all: if one precondition
    fails, nothing is written."""

    writes: tuple[Put | Update | Delete, ...]
    operation: ClassVar[str] = "TransactWriteItems"


Single = Put | Update | Delete
Write = Single | Transaction

BATCH_SIZE = 25  # items of one BatchWriteItem call; a batch is not a transaction
TRANSACTION_SIZE = 100  # items of one TransactWriteItems call (DynamoDB's limit)
BATCH_OPERATION = "BatchWriteItem"


def _stored(value: Any) -> Any:
    """A value as the table keeps it: JSON types (an enum member is its text)."""
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _stored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stored(v) for v in value]
    return value


def dump(record: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    """A record as stored: JSON types, and no null fields (smaller items, fewer WCUs)."""
    return record.model_dump(mode="json", exclude_none=True, exclude=exclude)


def _due(due_at: int | None) -> dict[str, Any]:
    return {DUE_PARTITION: DUE_VALUE, DUE_AT: due_at} if due_at is not None else {}


def _count_name(phase: Phase | str, status: PhaseStatus | str) -> str:
    return f"n_{phase}_{status}"


def _label_dropped(phase: Phase, status: PhaseStatus, fields: dict[str, Any]) -> tuple[str, ...]:
    """A backup that ends other than SUCCEEDED made no recovery point: its result loses
    the consistency label its job was started with (a recovery point its job makes after
    all is labelled again when that is reported: `logic/results.py`)."""
    if phase is Phase.BACKUP and status != PhaseStatus.SUCCEEDED and "consistency" not in fields:
        return (f"phases.{Phase.BACKUP}.consistency",)
    return ()


def group_from_item(item: dict[str, Any]) -> GroupRecord:
    """A group as read: its `n_<PHASE>_<STATUS>` counters gathered into `counts`."""
    counts = {k[2:]: int(v) for k, v in item.items() if k.startswith("n_")}
    return GroupRecord.model_validate(item | {"counts": counts})


def barrier_from_item(item: dict[str, Any]) -> BarrierRecord:
    """A barrier as read: its `a_<PHASE>` and `n_<PHASE>_<STATUS>` counters gathered."""
    counts = {k[2:]: int(v) for k, v in item.items() if k.startswith("n_")}
    arrived = {k[2:]: int(v) for k, v in item.items() if k.startswith("a_")}
    return BarrierRecord.model_validate(item | {"counts": counts, "arrived": arrived})


# -- runs ------------------------------------------------------------------------------------


def put_run_if_new(run: RunRecord, expires_at: int, due_at: int | None) -> Put:
    """Write the run header unless the run exists already (a duplicate start)."""
    return Put(
        run_key(run.run_id) | dump(run) | _due(due_at) | {TTL_ATTRIBUTE: expires_at},
        when=Missing(PARTITION_KEY),
    )


def activate_run(run: RunRecord, due_at: int) -> Update:
    """STARTING -> RUNNING, with its plan and groups; looked at again by `due_at`."""
    return Update(
        run_key(run.run_id),
        set={
            "status": RunStatus.RUNNING,
            "plan": list(run.plan),
            "groups_total": run.groups_total,
            "groups_pending": run.groups_pending,
            "tallies": run.tallies,
            "instance_count": run.instance_count,
            DUE_AT: due_at,
        },
        when=eq("status", RunStatus.STARTING),
    )


def mark_start_announced(run_id: str, at: str, due_at: int) -> Update:
    """The run's Run Started event (and its groups' first Phase Requested) were put: the
    header is next due at `due_at`, as a last resort."""
    return Update(
        run_key(run_id),
        set={"start_announced_at": at, DUE_AT: due_at},
        when=eq("status", RunStatus.RUNNING),
    )


def reclaim_start_announcement(run_id: str, now_epoch: int, until: int) -> Update:
    """Take over announcing a RUNNING run whose start handler died before it put Run
    Started (its claim, the header's due time, ran out)."""
    return Update(
        run_key(run_id),
        set={DUE_AT: until},
        when=all_of(
            eq("status", RunStatus.RUNNING), Missing("start_announced_at"), le(DUE_AT, now_epoch)
        ),
    )


def reclaim_start(run_id: str, now_epoch: int, until: int) -> Update:
    """Take over a start whose handler died (its claim ran out)."""
    return Update(
        run_key(run_id),
        set={DUE_AT: until},
        when=all_of(eq("status", RunStatus.STARTING), le(DUE_AT, now_epoch)),
    )


def complete_run(
    run_id: str,
    status: RunStatus,
    counts: dict[str, int],
    reason: str | None,
    at: str,
    announce_by: int,
) -> Update:
    """RUNNING -> its final status; due again by `announce_by` until announced."""
    return Update(
        run_key(run_id),
        set={
            "status": status,
            "counts": counts,
            "finished_at": at,
            "reason": reason,
            DUE_PARTITION: DUE_VALUE,
            DUE_AT: announce_by,
        },
        when=eq("status", RunStatus.RUNNING),
    )


def mark_announced(run_id: str, at: str) -> Update:
    """The run's Run Completed event was put: nothing is due for it any more."""
    return Update(
        run_key(run_id),
        set={"announced_at": at},
        remove=(DUE_PARTITION, DUE_AT),
        when=Exists(PARTITION_KEY),
    )


def cancel_run(run_id: str, reason: str | None, at: str) -> Update:
    """Mark a RUNNING run cancelled at `at`, with the reason asked, unless it is already:
    only the first cancel of a run is applied (a repeated or retried one finds it
    cancelled)."""
    cancelled = {"cancelled": True, "cancelled_at": at}
    return Update(
        run_key(run_id),
        set=cancelled | ({"cancel_reason": reason} if reason is not None else {}),
        when=all_of(eq("status", RunStatus.RUNNING), ne("cancelled", True)),
    )


def keep_cancel(run_id: str, reason: str | None, at: str, expires_at: int) -> Update:
    """Keep a cancel for a run that does not exist yet or is still STARTING, so that the
    handler that makes it RUNNING applies it; the first one kept stays (its reason)."""
    kept = {"run_id": run_id, "requested_at": at, TTL_ATTRIBUTE: expires_at}
    return Update(
        pending_cancel_key(run_id),
        set=kept | ({"reason": reason} if reason is not None else {}),
        when=Missing(PARTITION_KEY),
    )


def rearm_run(run_id: str, due_at: int) -> Update:
    """Look at a run header again at `due_at`, if it is still in the due index."""
    return Update(run_key(run_id), set={DUE_AT: due_at}, when=Exists(DUE_PARTITION))


def mark_run_notified(run_id: str, at: str) -> Update:
    """Claim the run's one notification."""
    return Update(
        run_key(run_id),
        set={"notified_at": at},
        when=all_of(Exists(PARTITION_KEY), Missing("notified_at")),
    )


def unmark_run_notified(run_id: str, at: str) -> Update:
    """Give the claim `at` back (only that claim)."""
    return Update(run_key(run_id), remove=("notified_at",), when=eq("notified_at", at))


# -- the reconciler's containment ------------------------------------------------------------


def note_due_failure(run_id: str, group_id: str, error: str, now_epoch: int) -> Update:
    """One more failure of the reconciler on a due item (run header or group), with the
    last error and when it happened; only on an item that exists (never creates one)."""
    return Update(
        due_key(run_id, group_id),
        add={"reconcile_failures": 1},
        set={
            "last_reconcile_error": error[:LAST_ERROR_CHARACTERS],
            "last_reconcile_failure_at": now_epoch,
        },
        when=Exists(PARTITION_KEY),
        returns_new=True,
    )


def set_aside(run_id: str, group_id: str, reason: str) -> Update:
    """Take a due item out of the due index, so that the reconciler no longer picks it up,
    with the reason; only if it is still in the index."""
    return Update(
        due_key(run_id, group_id),
        set={"set_aside_reason": reason},
        remove=(DUE_PARTITION,),
        when=Exists(DUE_PARTITION),
    )


# -- groups and instances --------------------------------------------------------------------


def groups_and_instances(
    groups: list[GroupRecord],
    instances: list[InstanceRecord],
    expires_at: int,
    barriers: list[BarrierRecord] | None = None,
    tallies: list[TallyRecord] | None = None,
) -> list[Put]:
    """The items of a run's groups (and the barriers of their parts, the tallies that
    count them) and instances, written unconditionally (in batches)."""
    expires = {TTL_ATTRIBUTE: expires_at}
    return (
        [Put(tally_key(t.run_id, t.tally) | dump(t) | expires) for t in tallies or []]
        + [
            Put(barrier_key(b.run_id, b.barrier) | dump(b, exclude={"counts", "arrived"}) | expires)
            for b in barriers or []
        ]
        + [
            Put(
                group_key(g.run_id, g.group_id)
                | dump(g, exclude={"counts", "finalized"})
                | expires
                | _due(g.due_at)
            )
            for g in groups
        ]
        + [
            Put(instance_key(i.run_id, i.group_id, i.instance_id) | dump(i) | expires)
            for i in instances
        ]
    )


def open_phase(
    run_id: str,
    group_id: str,
    phase: Phase,
    pending: int,
    deadline: int,
    due_at: int,
    claim_until: int,
) -> Update:
    """REQUESTED -> OPEN for `phase`, with the number of members to wait for (all of them:
    each is counted out when it ends the phase, skipped ones included, so that a member
    left PENDING by a handler that died keeps the phase open until it is resumed), the
    phase's deadline, when the reconciler should look first, and the caller's claim on
    making the side effects."""
    return Update(
        group_key(run_id, group_id),
        set={
            "phase_state": GroupPhaseState.OPEN,
            "pending": pending,
            "deadline": deadline,
            DUE_AT: due_at,
            "claim_until": claim_until,
            "requested_again": False,
        },
        when=all_of(eq("phase", phase), eq("phase_state", GroupPhaseState.REQUESTED)),
    )


def drop_group(run_id: str, group_id: str) -> Delete:
    """Delete a group that has no member (a start that died wrote it; its resumption
    found its instances gone), while it has not entered a phase."""
    return Delete(group_key(run_id, group_id), when=eq("phase_state", GroupPhaseState.REQUESTED))


def claim_phase(run_id: str, group_id: str, phase: Phase, now_epoch: int, until: int) -> Update:
    """Take over making an OPEN phase's side effects, if nobody holds the claim now."""
    return Update(
        group_key(run_id, group_id),
        set={"claim_until": until},
        when=all_of(
            eq("phase", phase),
            eq("phase_state", GroupPhaseState.OPEN),
            le("claim_until", now_epoch),
        ),
    )


def rearm(run_id: str, group_id: str, phase: str, due_at: int) -> Update:
    """Look at a group again at `due_at`, if it is still in `phase` and in the due index."""
    return Update(
        group_key(run_id, group_id),
        set={DUE_AT: due_at},
        when=all_of(eq("phase", phase), Exists(DUE_PARTITION)),
    )


def request_again(run_id: str, group_id: str, phase: Phase, due_at: int) -> Update:
    """The reconciler put a group's Phase Requested again; it looks again at `due_at`."""
    return Update(
        group_key(run_id, group_id),
        set={DUE_AT: due_at, "requested_again": True},
        when=all_of(
            eq("phase", phase), eq("phase_state", GroupPhaseState.REQUESTED), Exists(DUE_PARTITION)
        ),
    )


def cancel_group(run_id: str, group_id: str) -> Update:
    return Update(group_key(run_id, group_id), set={"cancelled": True}, when=Exists(PARTITION_KEY))


def annotate_late_report(
    run_id: str, group_id: str, instance_id: str, phase: Phase, status: str, text: str
) -> Update:
    """Keep a report for a phase that already ended otherwise; change nothing else."""
    result = f"phases.{phase}"
    return Update(
        instance_key(run_id, group_id, instance_id),
        set={f"{result}.late_report": text},
        when=all_of(
            Exists(result),
            ne(f"{result}.status", status),
            ne(f"{result}.status", PhaseStatus.IN_PROGRESS),
        ),
    )


def set_phase_result(
    run_id: str,
    group_id: str,
    instance_id: str,
    phase: Phase,
    result: PhaseResult,
    expected: PhaseStatus,
) -> Update:
    """Replace one instance's result for `phase` if its status is `expected`."""
    return Update(
        instance_key(run_id, group_id, instance_id),
        set={f"phases.{phase}": dump(result)},
        when=eq(f"phases.{phase}.status", expected),
    )


def annotate_phase(
    run_id: str, group_id: str, instance_id: str, phase: Phase, fields: dict[str, Any]
) -> Update:
    """Record ids learnt from a side effect (command id, backup job id) on the phase."""
    return Update(
        instance_key(run_id, group_id, instance_id),
        set={f"phases.{phase}.{name}": value for name, value in fields.items()},
    )


def mark_terminated(run_id: str, group_id: str, instance_id: str) -> Update:
    return Update(
        instance_key(run_id, group_id, instance_id),
        set={"terminated": True},
        when=Exists(PARTITION_KEY),
    )


def finish_phase(
    run_id: str,
    group_id: str,
    instance_id: str,
    phase: Phase,
    status: PhaseStatus,
    fields: dict[str, Any],
    expected: PhaseStatus = PhaseStatus.IN_PROGRESS,
) -> Transaction:
    """Record a terminal status of a phase whose status is `expected` (IN_PROGRESS; or
    PENDING, for a member skipped or timed out before it was marked) and count it in its
    group.

    One transaction, so that the group's barrier counter moves exactly once per instance:
    a duplicate, stale or late report fails the condition and changes nothing. `fields`
    (reason, ended_at, ...) are set on the phase result.
    """
    return finish_phases(run_id, group_id, phase, status, {instance_id: fields}, expected)


def finish_phases(
    run_id: str,
    group_id: str,
    phase: Phase,
    status: PhaseStatus,
    fields: dict[str, dict[str, Any]],
    expected: PhaseStatus,
) -> Transaction:
    """`finish_phase` for several members of one group (instance id: its fields), counted
    in the group by one write: all of them, or none if one was not `expected`."""
    result = f"phases.{phase}"
    when: Condition = eq(f"{result}.status", expected)
    if phase is Phase.BACKUP:  # a member released at capture is no longer counted in `pending`
        when = all_of(when, Missing(f"{result}.released_at"))
    return Transaction(
        (
            *(
                Update(
                    instance_key(run_id, group_id, instance_id),
                    set={f"{result}.status": status}
                    | {f"{result}.{name}": value for name, value in values.items()},
                    remove=_label_dropped(phase, status, values),
                    when=when,
                )
                for instance_id, values in fields.items()
            ),
            Update(
                group_key(run_id, group_id),
                add={"pending": -len(fields), _count_name(phase, status): len(fields)},
                when=all_of(eq("phase", phase), eq("phase_state", GroupPhaseState.OPEN)),
            ),
        )
    )


# -- release at capture (`logic/capture.py`) ------------------------------------------------

BACKUP_RESULT = f"phases.{Phase.BACKUP}"


def arm_capture(
    run_id: str, group_id: str, capture_until: int | None, jobs_deadline: int, due_at: int
) -> Update:
    """A group in BACKUP waits for its members' capture: until when it may (the freeze
    budget; None: no budget), by when its jobs must end, and when the reconciler looks
    (covering a lost capture poll)."""
    fields: dict[str, Any] = {"jobs_deadline": jobs_deadline, DUE_AT: due_at}
    if capture_until is not None:
        fields["capture_until"] = capture_until
    return Update(
        group_key(run_id, group_id),
        set=fields,
        when=all_of(eq("phase", Phase.BACKUP), eq("phase_state", GroupPhaseState.OPEN)),
    )


def claim_capture_poll(run_id: str, group_id: str, poll: int, next_at: int) -> Update:
    """Take capture poll number `poll` of a group waiting for its capture (once: a
    duplicate of the poll's message, or a late one, finds the count moved on) and note
    when the next one is due."""
    return Update(
        group_key(run_id, group_id),
        set={"capture_polls": poll + 1, "next_capture_poll": next_at},
        when=all_of(
            eq("phase", Phase.BACKUP),
            eq("phase_state", GroupPhaseState.OPEN),
            eq("capture_polls", poll),
        ),
    )


def release_members(
    run_id: str, group_id: str, fields: dict[str, dict[str, Any]], count: str
) -> Transaction:
    """Members of a group in BACKUP are released while their jobs go on (captured, or let
    go at the freeze budget): noted on each (once), counted out of the group's `pending`
    and into its `jobs_pending`, all or none."""
    return Transaction(
        (
            *(
                Update(
                    instance_key(run_id, group_id, instance_id),
                    set={f"{BACKUP_RESULT}.{name}": value for name, value in values.items()},
                    when=all_of(
                        eq(f"{BACKUP_RESULT}.status", PhaseStatus.IN_PROGRESS),
                        Missing(f"{BACKUP_RESULT}.released_at"),
                    ),
                )
                for instance_id, values in fields.items()
            ),
            Update(
                group_key(run_id, group_id),
                add={
                    "pending": -len(fields),
                    "jobs_pending": len(fields),
                    _count_name(Phase.BACKUP, count): len(fields),
                },
                when=all_of(eq("phase", Phase.BACKUP), eq("phase_state", GroupPhaseState.OPEN)),
            ),
        )
    )


def finish_released(
    run_id: str, group_id: str, instance_id: str, status: PhaseStatus, fields: dict[str, Any]
) -> Transaction:
    """The job of a released member is terminal: its BACKUP result ends (once), counted
    out of the group's `jobs_pending`, wherever the group is now."""
    return Transaction(
        (
            Update(
                instance_key(run_id, group_id, instance_id),
                set={f"{BACKUP_RESULT}.status": status}
                | {f"{BACKUP_RESULT}.{name}": value for name, value in fields.items()},
                remove=_label_dropped(Phase.BACKUP, status, fields),
                when=all_of(
                    eq(f"{BACKUP_RESULT}.status", PhaseStatus.IN_PROGRESS),
                    Exists(f"{BACKUP_RESULT}.released_at"),
                ),
            ),
            Update(
                group_key(run_id, group_id),
                add={"jobs_pending": -1, _count_name(Phase.BACKUP, status): 1},
                when=Exists(PARTITION_KEY),
            ),
        )
    )


def advance_group(
    run_id: str,
    group_id: str,
    from_phase: Phase,
    to_phase: Phase | None,
    aborted: bool,
    due_at: int,
) -> Update:
    """Close `from_phase` of a group whose members are all terminal; enter the next. Only
    one caller wins: the phase must still be OPEN with nobody pending."""
    return Update(
        group_key(run_id, group_id),
        set={
            "phase": to_phase or DONE,
            "phase_state": GroupPhaseState.REQUESTED if to_phase else GroupPhaseState.DONE,
            "aborted": aborted,
            "pending": 0,
            DUE_AT: due_at,
        },
        remove=("deadline",),
        when=all_of(
            eq("phase", from_phase), eq("phase_state", GroupPhaseState.OPEN), le("pending", 0)
        ),
    )


def arrive_at_barrier(
    run_id: str,
    group_id: str,
    barrier: str,
    from_phase: Phase,
    to_phase: Phase,
    aborted: bool,
    due_at: int,
    counts: dict[str, int],
) -> Transaction:
    """A part of a large group closes `from_phase`: it waits for `to_phase` at its
    barrier, which counts it in (once: the part must still be OPEN in `from_phase` with
    nobody pending) with its members' results of the phase."""
    return Transaction(
        (
            Update(
                group_key(run_id, group_id),
                set={
                    "phase": to_phase,
                    "phase_state": GroupPhaseState.WAITING,
                    "aborted": aborted,
                    "pending": 0,
                    DUE_AT: due_at,
                },
                remove=("deadline",),
                when=all_of(
                    eq("phase", from_phase),
                    eq("phase_state", GroupPhaseState.OPEN),
                    le("pending", 0),
                ),
            ),
            Update(
                barrier_key(run_id, barrier),
                add={f"a_{from_phase}": 1}
                | {
                    f"n_{name}": n
                    for name, n in counts.items()
                    if n and name.startswith(f"{from_phase}_")
                },
                when=Exists(PARTITION_KEY),
            ),
        )
    )


def release_group(
    run_id: str,
    group_id: str,
    phase: Phase,
    aborted: bool,
    due_at: int,
    calls_per_second: float | None = None,
) -> Update:
    """A part waiting at its barrier enters `phase` (every part finished the one before),
    requested by `due_at` (paced: its turn), at most `calls_per_second` if paced by calls."""
    return Update(
        group_key(run_id, group_id),
        set={
            "phase_state": GroupPhaseState.REQUESTED,
            "aborted": aborted,
            DUE_AT: due_at,
            "calls_per_second": calls_per_second,
        },
        when=all_of(eq("phase", phase), eq("phase_state", GroupPhaseState.WAITING)),
    )


def finish_group(
    run_id: str, group_id: str, tally: int | None = None, last_of_tally: bool = False
) -> Transaction:
    """Count a finished group out of its run, once: out of the run header, or out of its
    tally; the last group of a tally (one left in it, checked) closes the tally and counts
    it out of the run header in the same transaction, so that a tally is never left at
    zero and open."""
    group = Update(
        group_key(run_id, group_id),
        set={"finalized": True},
        remove=(DUE_PARTITION, DUE_AT),
        when=all_of(eq("phase_state", GroupPhaseState.DONE), Missing("finalized")),
    )
    header = Update(run_key(run_id), add={"groups_pending": -1})
    if tally is None:
        return Transaction((group, header))
    if not last_of_tally:
        open_tally = all_of(Exists("pending"), ne("pending", 1), ne("closed", True))
        count = Update(tally_key(run_id, tally), add={"pending": -1}, when=open_tally)
        return Transaction((group, count))
    close = Update(tally_key(run_id, tally), set={"closed": True}, add={"pending": -1},
                   when=all_of(eq("pending", 1), ne("closed", True)))  # fmt: skip
    return Transaction((group, close, header))


def tally_from_item(item: dict[str, Any]) -> TallyRecord:
    return TallyRecord.model_validate(item)


def set_instance_outcome(
    run_id: str, group_id: str, instance_id: str, status: InstanceStatus, reason: str | None
) -> Update:
    return Update(
        instance_key(run_id, group_id, instance_id),
        set={"status": status, "reason": reason},
        when=Exists(PARTITION_KEY),
    )


# -- profiles --------------------------------------------------------------------------------


def put_profile(profile: Profile) -> Put:
    """Store a profile, replacing one of the same name."""
    return Put(profile_key(profile.name) | dump(profile))


def delete_profile(name: str) -> Delete:
    return Delete(profile_key(name), when=Exists(PARTITION_KEY))


def advance_profile(name: str, updated_at: str, previous: str | None, slot: str) -> Update:
    """Record `slot` as the last one dealt with, if nobody did since `previous` and the
    profile was not replaced meanwhile (a concurrent tick, or a new definition)."""
    return Update(
        profile_key(name),
        set={"last_slot": slot},
        when=all_of(
            eq("updated_at", updated_at),
            eq("last_slot", previous) if previous else Missing("last_slot"),
        ),
    )


# -- leases ----------------------------------------------------------------------------------


def acquire_lease(lease: Lease, now_epoch: int) -> Put:
    """Take the lease on an instance: free, already ours, or run out."""
    return Put(
        lease_key(lease.instance_id) | dump(lease) | {TTL_ATTRIBUTE: lease.expires_at},
        when=any_of(
            Missing(PARTITION_KEY), eq("run_id", lease.run_id), lt(TTL_ATTRIBUTE, now_epoch)
        ),
    )


def release_lease(instance_id: str, run_id: str) -> Delete:
    """Give the lease back, if this run still holds it."""
    return Delete(lease_key(instance_id), when=eq("run_id", run_id))


# -- leases kept for a backup job that outlives its run ---------------------------------------


def hold_lease_for_job(instance_id: str, run_id: str, backup_job_id: str) -> Update:
    """Keep this run's lease after the run ends, until `backup_job_id` is terminal."""
    return Update(
        lease_key(instance_id),
        set={"backup_job_id": backup_job_id},
        when=eq("run_id", run_id),
    )


def release_lease_after_job(instance_id: str, run_id: str, backup_job_id: str) -> Delete:
    """Give back a lease kept for `backup_job_id`, now terminal (only such a lease: a
    running run's lease is released by its finalization)."""
    return Delete(
        lease_key(instance_id),
        when=all_of(eq("run_id", run_id), eq("backup_job_id", backup_job_id)),
    )


# -- correlation -----------------------------------------------------------------------------


def put_command(command_id: str, run_id: str, group_id: str, phase: Phase, expires_at: int) -> Put:
    return Put(
        command_key(command_id)
        | {"run_id": run_id, "group_id": group_id, "phase": phase, TTL_ATTRIBUTE: expires_at}
    )


def put_job(
    backup_job_id: str,
    run_id: str,
    group_id: str,
    instance_id: str,
    expires_at: int,
    flags: dict[str, bool] | None = None,
) -> Put:
    """A job's item names its instance; `flags` say how its end is recorded (`at_capture`:
    its member may be released before; `windows_vss`: a VSS backup was asked for)."""
    return Put(
        job_key(backup_job_id)
        | {"run_id": run_id, "group_id": group_id, "instance_id": instance_id}
        | {name: True for name, on in (flags or {}).items() if on}
        | {TTL_ATTRIBUTE: expires_at}
    )


def flag_job(backup_job_id: str, name: str) -> Update:
    """Note on a job's item how its end is to be recorded (`put_job`'s flags), if it has
    one (a job whose record was lost is found by the reconciler, which reads the member)."""
    return Update(job_key(backup_job_id), set={name: True}, when=Exists(PARTITION_KEY))
