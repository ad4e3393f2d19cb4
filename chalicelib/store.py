"""The state store: what the handlers call, and its one implementation.

`Store` is the public surface (a protocol, checked by mypy): the handlers depend on it and
on nothing else of a store. `TableStore` implements every method of it once, over five
primitives of a table: read an item, query a partition, query the due index, apply a
write of `chalicelib.models.state_machine`, put a batch of items. Two tables provide them:
DynamoDB (`chalicelib/gateways/state_store.py`, deployed) and plain dicts
(`prepost/local/memory_store.py`, local mode's big runs and the property test). Neither
has a transition of its own: they only interpret the definitions.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from chalicelib.models import state_machine as sm
from chalicelib.models.events import CancelRequest
from chalicelib.models.profile import Profile
from chalicelib.models.state import (
    BarrierRecord,
    GroupRecord,
    InstanceRecord,
    InstanceStatus,
    Lease,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
    RunStatus,
    StartedJob,
    TallyRecord,
)

T = TypeVar("T")


class Store(Protocol):
    """Typed reads and conditional writes of the state table. A write that answers a bool
    answers False when its precondition did not hold (nothing was written)."""

    def expiry(self, now_epoch: int) -> int: ...

    # runs
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def put_run_if_new(self, run: RunRecord, now_epoch: int, due_at: int | None = None) -> bool: ...
    def activate_run(self, run: RunRecord, due_at: int) -> bool: ...
    def reclaim_start(self, run_id: str, now_epoch: int, until: int) -> bool: ...
    def mark_start_announced(self, run_id: str, at: str, due_at: int) -> None: ...
    def reclaim_start_announcement(self, run_id: str, now_epoch: int, until: int) -> bool: ...
    def complete_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        reason: str | None,
        at: str,
        announce_by: int,
    ) -> bool: ...
    def mark_announced(self, run_id: str, at: str) -> None: ...
    def cancel_run(self, run_id: str, at: str, reason: str | None = None) -> bool: ...
    def keep_cancel(self, request: CancelRequest, at: str, now_epoch: int) -> bool: ...
    def pending_cancel(self, run_id: str) -> CancelRequest | None: ...
    def rearm_run(self, run_id: str, due_at: int) -> None: ...
    def mark_run_notified(self, run_id: str, at: str) -> bool: ...
    def unmark_run_notified(self, run_id: str, at: str) -> None: ...

    # the reconciler
    def due_items(self, now_epoch: int) -> list[tuple[str, str]]: ...
    def note_due_failure(self, run_id: str, group_id: str, error: str, now_epoch: int) -> int: ...
    def set_aside(self, run_id: str, group_id: str, reason: str) -> bool: ...

    # groups and instances
    def put_groups_and_instances(
        self,
        groups: list[GroupRecord],
        instances: list[InstanceRecord],
        now_epoch: int,
        barriers: list[BarrierRecord] | None = None,
        tallies: list[TallyRecord] | None = None,
    ) -> None: ...
    def get_barrier(self, run_id: str, barrier: str) -> BarrierRecord | None: ...
    def get_tally(self, run_id: str, tally: int) -> TallyRecord | None: ...
    def drop_group(self, run_id: str, group_id: str) -> bool: ...
    def arrive_at_barrier(
        self, group: GroupRecord, to_phase: Phase, aborted: bool, due_at: int
    ) -> bool: ...
    def release_group(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        aborted: bool,
        due_at: int,
        calls_per_second: float | None = None,
    ) -> bool: ...
    def get_group(self, run_id: str, group_id: str) -> GroupRecord | None: ...
    def list_groups(self, run_id: str) -> list[GroupRecord]: ...
    def get_instance(
        self, run_id: str, group_id: str, instance_id: str
    ) -> InstanceRecord | None: ...
    def list_instances(self, run_id: str, group_id: str | None = None) -> list[InstanceRecord]: ...
    def open_phase(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        pending: int,
        deadline: int,
        due_at: int,
        claim_until: int,
    ) -> bool: ...
    def claim_phase(
        self, run_id: str, group_id: str, phase: Phase, now_epoch: int, until: int
    ) -> bool: ...
    def rearm(self, run_id: str, group_id: str, phase: str, due_at: int) -> None: ...
    def request_again(self, run_id: str, group_id: str, phase: Phase, due_at: int) -> bool: ...
    def cancel_group(self, run_id: str, group_id: str) -> None: ...
    def annotate_late_report(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, status: str, text: str
    ) -> None: ...
    def set_phase_result(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        result: PhaseResult,
        expected: PhaseStatus,
    ) -> bool: ...
    def annotate_phase(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, **fields: Any
    ) -> None: ...
    def start_phases(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        instance_ids: list[str],
        result: PhaseResult,
        expected: PhaseStatus,
    ) -> list[str]: ...
    def annotate_phases(
        self, run_id: str, group_id: str, phase: Phase, fields: dict[str, dict[str, Any]]
    ) -> None: ...
    def mark_terminated(self, run_id: str, group_id: str, instance_id: str) -> None: ...
    def finish_phases(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        status: PhaseStatus,
        fields: dict[str, dict[str, Any]],
        expected: PhaseStatus,
    ) -> list[str]: ...
    def finish_phase(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        status: PhaseStatus,
        fields: dict[str, Any],
        expected: PhaseStatus = PhaseStatus.IN_PROGRESS,
    ) -> bool: ...
    def arm_capture(
        self,
        run_id: str,
        group_id: str,
        capture_until: int | None,
        jobs_deadline: int,
        due_at: int,
    ) -> bool: ...
    def claim_capture_poll(self, run_id: str, group_id: str, poll: int, next_at: int) -> bool: ...
    def release_members(
        self, run_id: str, group_id: str, fields: dict[str, dict[str, Any]], count: str
    ) -> list[str]: ...
    def finish_released(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        status: PhaseStatus,
        fields: dict[str, Any],
    ) -> bool: ...
    def advance_group(
        self,
        run_id: str,
        group_id: str,
        from_phase: Phase,
        to_phase: Phase | None,
        aborted: bool,
        due_at: int,
    ) -> bool: ...
    def finish_group(
        self, run_id: str, group_id: str, tally: int | None = None, last_of_tally: bool = False
    ) -> bool: ...
    def set_instance_outcomes(
        self, run_id: str, outcomes: list[tuple[str, str, InstanceStatus, str | None]]
    ) -> None: ...

    # profiles
    def put_profile(self, profile: Profile) -> None: ...
    def get_profile(self, name: str) -> Profile | None: ...
    def list_profiles(self) -> list[Profile]: ...
    def delete_profile(self, name: str) -> bool: ...
    def advance_profile(
        self, name: str, updated_at: str, previous: str | None, slot: str
    ) -> bool: ...

    # leases
    def acquire_lease(self, lease: Lease, now_epoch: int) -> Lease | None: ...
    def acquire_leases(self, leases: list[Lease], now_epoch: int) -> list[Lease]: ...
    def get_lease(self, instance_id: str) -> Lease | None: ...
    def release_lease(self, instance_id: str, run_id: str) -> None: ...
    def release_leases(self, instance_ids: list[str], run_id: str) -> None: ...

    # leases kept for a backup job that outlives its run
    def hold_lease_for_job(self, instance_id: str, run_id: str, backup_job_id: str) -> bool: ...
    def release_lease_after_job(
        self, instance_id: str, run_id: str, backup_job_id: str
    ) -> bool: ...

    # correlation
    def record_command(
        self,
        command_id: str,
        run_id: str,
        group_id: str,
        phase: Phase,
        instance_ids: list[str],
        now_epoch: int,
    ) -> None: ...
    def get_command(self, command_id: str) -> dict[str, Any] | None: ...
    def record_jobs(
        self, run_id: str, group_id: str, jobs: list[StartedJob], now_epoch: int
    ) -> None: ...
    def get_job(self, backup_job_id: str) -> dict[str, Any] | None: ...
    def flag_jobs(self, backup_job_ids: list[str], name: str) -> None: ...


class TableStore(abc.ABC):
    """Every method of `Store`, once: each write is a definition of `state_machine`,
    applied by the table's `_write`."""

    def __init__(self, retention_seconds: int) -> None:
        self._retention = retention_seconds

    # -- the table's primitives ----------------------------------------------------------

    @abc.abstractmethod
    def _get(self, key: sm.Key) -> dict[str, Any] | None:
        """The item at `key` (a consistent read), or None."""

    @abc.abstractmethod
    def _query(self, partition: str, sort_prefix: str) -> list[dict[str, Any]]:
        """The items of `partition` whose sort key starts with `sort_prefix`, by sort key."""

    @abc.abstractmethod
    def _due(self, now_epoch: int) -> list[dict[str, Any]]:
        """The keys of the items of the due index whose `due_at` is `now_epoch` or before."""

    @abc.abstractmethod
    def _write(self, write: sm.Write) -> dict[str, Any] | None:
        """Apply `write`; None if a precondition failed (nothing written), else the item
        as it is afterwards for an `Update` that `returns_new`, else an empty dict."""

    @abc.abstractmethod
    def _put_batch(self, puts: list[sm.Put]) -> None:
        """Write at most `state_machine.BATCH_SIZE` unconditional puts in one call."""

    def _applied(self, write: sm.Write) -> bool:
        return self._write(write) is not None

    def _apply_batched(
        self, items: list[T], build: Callable[[list[T]], list[sm.Single]], size: int
    ) -> list[T]:
        """Apply the writes `build` makes of `items`, `size` items to a transaction (one
        call, where there would be one per item); the items whose writes applied. A
        transaction refused because a precondition failed is halved, and its halves tried
        again, until the refused items are alone: a few calls more per refused item, not
        one per item. One write alone is applied as itself, not as a transaction."""
        applied: list[T] = []
        batches = [items[n : n + size] for n in range(0, len(items), size)]
        while batches:
            batch = batches.pop()
            writes = build(batch)
            write = writes[0] if len(writes) == 1 else sm.Transaction(tuple(writes))
            if not writes or self._applied(write):
                applied += batch
            elif len(batch) > 1:
                middle = len(batch) // 2
                batches += [batch[:middle], batch[middle:]]
        return applied

    def expiry(self, now_epoch: int) -> int:
        """The TTL of history items written now."""
        return now_epoch + self._retention

    # -- runs ----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self._get(sm.run_key(run_id))
        return RunRecord.model_validate(item) if item else None

    def put_run_if_new(self, run: RunRecord, now_epoch: int, due_at: int | None = None) -> bool:
        return self._applied(sm.put_run_if_new(run, self.expiry(now_epoch), due_at))

    def activate_run(self, run: RunRecord, due_at: int) -> bool:
        return self._applied(sm.activate_run(run, due_at))

    def reclaim_start(self, run_id: str, now_epoch: int, until: int) -> bool:
        return self._applied(sm.reclaim_start(run_id, now_epoch, until))

    def mark_start_announced(self, run_id: str, at: str, due_at: int) -> None:
        self._write(sm.mark_start_announced(run_id, at, due_at))

    def reclaim_start_announcement(self, run_id: str, now_epoch: int, until: int) -> bool:
        return self._applied(sm.reclaim_start_announcement(run_id, now_epoch, until))

    def complete_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        reason: str | None,
        at: str,
        announce_by: int,
    ) -> bool:
        """Move a RUNNING run to its final status; False if it was not RUNNING. It stays
        due by `announce_by` until `mark_announced`, so a lost announcement is made again."""
        return self._applied(sm.complete_run(run_id, status, counts, reason, at, announce_by))

    def mark_announced(self, run_id: str, at: str) -> None:
        self._write(sm.mark_announced(run_id, at))

    def cancel_run(self, run_id: str, at: str, reason: str | None = None) -> bool:
        """Mark a RUNNING run cancelled at `at`; False if it is not running, or was
        cancelled already."""
        return self._applied(sm.cancel_run(run_id, reason, at))

    # A cancel that comes before its run is RUNNING is kept beside the run, for the handler
    # that makes the run RUNNING to apply (it expires with the run's history).

    def keep_cancel(self, request: CancelRequest, at: str, now_epoch: int) -> bool:
        """Keep `request` for its run; False if one was kept already (that one stays)."""
        write = sm.keep_cancel(request.run_id, request.reason, at, self.expiry(now_epoch))
        return self._applied(write)

    def pending_cancel(self, run_id: str) -> CancelRequest | None:
        """The cancel kept for the run, if any."""
        item = self._get(sm.pending_cancel_key(run_id))
        return CancelRequest.model_validate(item) if item else None

    def rearm_run(self, run_id: str, due_at: int) -> None:
        self._write(sm.rearm_run(run_id, due_at))

    def mark_run_notified(self, run_id: str, at: str) -> bool:
        """Claim the run's one notification; False if it was claimed already (a repeated
        Run Completed event) or the run is not in the table."""
        return self._applied(sm.mark_run_notified(run_id, at))

    def unmark_run_notified(self, run_id: str, at: str) -> None:
        """Give the claim back after the publish failed, so that a retry sends it."""
        self._write(sm.unmark_run_notified(run_id, at))

    # -- the reconciler ------------------------------------------------------------------

    def due_items(self, now_epoch: int) -> list[tuple[str, str]]:
        """(run id, group id) of every item of the due index due by now, earliest first;
        the group id is empty for a run header (a run still starting, or not announced)."""
        return [sm.due_entry(key) for key in sorted(self._due(now_epoch), key=_due_order)]

    def note_due_failure(self, run_id: str, group_id: str, error: str, now_epoch: int) -> int:
        """Count one more failure of the reconciler on the due item (run id, group id) as
        `due_items` names it, keeping the error; the new count (0: no such item)."""
        item = self._write(sm.note_due_failure(run_id, group_id, error, now_epoch))
        return int(item.get("reconcile_failures", 0)) if item else 0

    def set_aside(self, run_id: str, group_id: str, reason: str) -> bool:
        """Take the due item (run id, group id) out of the due index, with `reason`; False
        if it was not in the index."""
        return self._applied(sm.set_aside(run_id, group_id, reason))

    # -- groups and instances ------------------------------------------------------------

    def put_groups_and_instances(
        self,
        groups: list[GroupRecord],
        instances: list[InstanceRecord],
        now_epoch: int,
        barriers: list[BarrierRecord] | None = None,
        tallies: list[TallyRecord] | None = None,
    ) -> None:
        """Write a run's groups (with the barriers of their parts and the tallies that
        count them) and instances, in batches (not one transaction: a crash may leave the
        first batches written; writing them again is harmless)."""
        expires = self.expiry(now_epoch)
        puts = sm.groups_and_instances(groups, instances, expires, barriers, tallies)
        for start in range(0, len(puts), sm.BATCH_SIZE):
            self._put_batch(puts[start : start + sm.BATCH_SIZE])

    def get_group(self, run_id: str, group_id: str) -> GroupRecord | None:
        item = self._get(sm.group_key(run_id, group_id))
        return sm.group_from_item(item) if item else None

    def drop_group(self, run_id: str, group_id: str) -> bool:
        return self._applied(sm.drop_group(run_id, group_id))

    def get_barrier(self, run_id: str, barrier: str) -> BarrierRecord | None:
        item = self._get(sm.barrier_key(run_id, barrier))
        return sm.barrier_from_item(item) if item else None

    def get_tally(self, run_id: str, tally: int) -> TallyRecord | None:
        item = self._get(sm.tally_key(run_id, tally))
        return sm.tally_from_item(item) if item else None

    def arrive_at_barrier(
        self, group: GroupRecord, to_phase: Phase, aborted: bool, due_at: int
    ) -> bool:
        """A part closes its phase and waits at its barrier for `to_phase`; False if it
        was not OPEN with nobody pending (another handler closed it)."""
        assert group.barrier is not None
        write = sm.arrive_at_barrier(
            group.run_id, group.group_id, group.barrier, Phase(group.phase), to_phase,
            aborted, due_at, group.counts,
        )  # fmt: skip
        return self._applied(write)

    def release_group(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        aborted: bool,
        due_at: int,
        calls_per_second: float | None = None,
    ) -> bool:
        """A part waiting at its barrier enters `phase`; False if it was not waiting."""
        write = sm.release_group(run_id, group_id, phase, aborted, due_at, calls_per_second)
        return self._applied(write)

    def list_groups(self, run_id: str) -> list[GroupRecord]:
        return [sm.group_from_item(item) for item in self._query(f"RUN#{run_id}", "GROUP#")]

    def get_instance(self, run_id: str, group_id: str, instance_id: str) -> InstanceRecord | None:
        item = self._get(sm.instance_key(run_id, group_id, instance_id))
        return InstanceRecord.model_validate(item) if item else None

    def list_instances(self, run_id: str, group_id: str | None = None) -> list[InstanceRecord]:
        prefix = "INST#" if group_id is None else f"INST#{group_id}#"
        return [InstanceRecord.model_validate(i) for i in self._query(f"RUN#{run_id}", prefix)]

    def open_phase(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        pending: int,
        deadline: int,
        due_at: int,
        claim_until: int,
    ) -> bool:
        write = sm.open_phase(run_id, group_id, phase, pending, deadline, due_at, claim_until)
        return self._applied(write)

    def claim_phase(
        self, run_id: str, group_id: str, phase: Phase, now_epoch: int, until: int
    ) -> bool:
        return self._applied(sm.claim_phase(run_id, group_id, phase, now_epoch, until))

    def rearm(self, run_id: str, group_id: str, phase: str, due_at: int) -> None:
        self._write(sm.rearm(run_id, group_id, phase, due_at))

    def request_again(self, run_id: str, group_id: str, phase: Phase, due_at: int) -> bool:
        return self._applied(sm.request_again(run_id, group_id, phase, due_at))

    def cancel_group(self, run_id: str, group_id: str) -> None:
        self._write(sm.cancel_group(run_id, group_id))

    def annotate_late_report(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, status: str, text: str
    ) -> None:
        self._write(sm.annotate_late_report(run_id, group_id, instance_id, phase, status, text))

    def set_phase_result(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        result: PhaseResult,
        expected: PhaseStatus,
    ) -> bool:
        write = sm.set_phase_result(run_id, group_id, instance_id, phase, result, expected)
        return self._applied(write)

    def annotate_phase(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, **fields: Any
    ) -> None:
        self._write(sm.annotate_phase(run_id, group_id, instance_id, phase, fields))

    def start_phases(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        instance_ids: list[str],
        result: PhaseResult,
        expected: PhaseStatus,
    ) -> list[str]:
        """`set_phase_result` for many members of a group, in transactions; the members
        whose result was `expected` and is now `result`."""

        def build(batch: list[str]) -> list[sm.Single]:
            return [
                sm.set_phase_result(run_id, group_id, instance_id, phase, result, expected)
                for instance_id in batch
            ]

        return self._apply_batched(instance_ids, build, sm.TRANSACTION_SIZE)

    def annotate_phases(
        self, run_id: str, group_id: str, phase: Phase, fields: dict[str, dict[str, Any]]
    ) -> None:
        """`annotate_phase` for many members of a group (instance id: its fields), in
        transactions."""

        def build(batch: list[str]) -> list[sm.Single]:
            return [
                sm.annotate_phase(run_id, group_id, instance_id, phase, fields[instance_id])
                for instance_id in batch
            ]

        self._apply_batched(list(fields), build, sm.TRANSACTION_SIZE)

    def finish_phases(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        status: PhaseStatus,
        fields: dict[str, dict[str, Any]],
        expected: PhaseStatus,
    ) -> list[str]:
        """`finish_phase` for many members of a group (instance id: the fields of its
        result), each transaction counting its members in the group once; the members
        finished."""

        def build(batch: list[str]) -> list[sm.Single]:
            return list(
                sm.finish_phases(run_id, group_id, phase, status, {i: fields[i] for i in batch},
                                 expected).writes
            )  # fmt: skip

        return self._apply_batched(list(fields), build, sm.TRANSACTION_SIZE - 1)

    def mark_terminated(self, run_id: str, group_id: str, instance_id: str) -> None:
        self._write(sm.mark_terminated(run_id, group_id, instance_id))

    def finish_phase(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        status: PhaseStatus,
        fields: dict[str, Any],
        expected: PhaseStatus = PhaseStatus.IN_PROGRESS,
    ) -> bool:
        write = sm.finish_phase(run_id, group_id, instance_id, phase, status, fields, expected)
        return self._applied(write)

    def arm_capture(
        self,
        run_id: str,
        group_id: str,
        capture_until: int | None,
        jobs_deadline: int,
        due_at: int,
    ) -> bool:
        write = sm.arm_capture(run_id, group_id, capture_until, jobs_deadline, due_at)
        return self._applied(write)

    def claim_capture_poll(self, run_id: str, group_id: str, poll: int, next_at: int) -> bool:
        return self._applied(sm.claim_capture_poll(run_id, group_id, poll, next_at))

    def release_members(
        self, run_id: str, group_id: str, fields: dict[str, dict[str, Any]], count: str
    ) -> list[str]:
        """`sm.release_members` in transactions; the members released."""

        def build(batch: list[str]) -> list[sm.Single]:
            chosen = {instance_id: fields[instance_id] for instance_id in batch}
            return list(sm.release_members(run_id, group_id, chosen, count).writes)

        return self._apply_batched(list(fields), build, sm.TRANSACTION_SIZE - 1)

    def finish_released(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        status: PhaseStatus,
        fields: dict[str, Any],
    ) -> bool:
        write = sm.finish_released(run_id, group_id, instance_id, status, fields)
        return self._applied(write)

    def advance_group(
        self,
        run_id: str,
        group_id: str,
        from_phase: Phase,
        to_phase: Phase | None,
        aborted: bool,
        due_at: int,
    ) -> bool:
        write = sm.advance_group(run_id, group_id, from_phase, to_phase, aborted, due_at)
        return self._applied(write)

    def finish_group(
        self, run_id: str, group_id: str, tally: int | None = None, last_of_tally: bool = False
    ) -> bool:
        """Count a finished group out (`sm.finish_group`); False if it was already, or if
        its tally's count was not what `last_of_tally` assumed."""
        return self._applied(sm.finish_group(run_id, group_id, tally, last_of_tally))

    def set_instance_outcomes(
        self, run_id: str, outcomes: list[tuple[str, str, InstanceStatus, str | None]]
    ) -> None:
        """The final status of many instances of a run (group id, instance id, status,
        reason), in transactions."""

        def build(batch: list[tuple[str, str, InstanceStatus, str | None]]) -> list[sm.Single]:
            return [sm.set_instance_outcome(run_id, *outcome) for outcome in batch]

        self._apply_batched(outcomes, build, sm.TRANSACTION_SIZE)

    # -- profiles ------------------------------------------------------------------------

    def put_profile(self, profile: Profile) -> None:
        self._write(sm.put_profile(profile))

    def get_profile(self, name: str) -> Profile | None:
        item = self._get(sm.profile_key(name))
        return Profile.model_validate(item) if item else None

    def list_profiles(self) -> list[Profile]:
        return [Profile.model_validate(item) for item in self._query(sm.PROFILES, "PROFILE#")]

    def delete_profile(self, name: str) -> bool:
        return self._applied(sm.delete_profile(name))

    def advance_profile(self, name: str, updated_at: str, previous: str | None, slot: str) -> bool:
        return self._applied(sm.advance_profile(name, updated_at, previous, slot))

    # -- leases --------------------------------------------------------------------------

    def acquire_lease(self, lease: Lease, now_epoch: int) -> Lease | None:
        """Take the lease on an instance; None if taken, else the current holder."""
        taken = self._applied(sm.acquire_lease(lease, now_epoch))
        return None if taken else self.get_lease(lease.instance_id)

    def acquire_leases(self, leases: list[Lease], now_epoch: int) -> list[Lease]:
        """Take every lease of `leases` that can be taken, a transaction of up to
        `TRANSACTION_SIZE` per call; the leases taken. A transaction refused because one
        of its leases is held is halved, and its halves tried again, until the held ones
        are alone: a few calls more per held instance, not one per instance."""

        def build(batch: list[Lease]) -> list[sm.Single]:
            return [sm.acquire_lease(lease, now_epoch) for lease in batch]

        return self._apply_batched(leases, build, sm.TRANSACTION_SIZE)

    def get_lease(self, instance_id: str) -> Lease | None:
        item = self._get(sm.lease_key(instance_id))
        return Lease.model_validate(item) if item else None

    def release_lease(self, instance_id: str, run_id: str) -> None:
        self._write(sm.release_lease(instance_id, run_id))

    def release_leases(self, instance_ids: list[str], run_id: str) -> None:
        """`release_lease` for many instances, in transactions."""

        def build(batch: list[str]) -> list[sm.Single]:
            return [sm.release_lease(instance_id, run_id) for instance_id in batch]

        self._apply_batched(instance_ids, build, sm.TRANSACTION_SIZE)

    # -- leases kept for a backup job that outlives its run ------------------------------

    def hold_lease_for_job(self, instance_id: str, run_id: str, backup_job_id: str) -> bool:
        """Keep the run's lease on an instance until its backup job is terminal; False if
        the run does not hold it (any more)."""
        return self._applied(sm.hold_lease_for_job(instance_id, run_id, backup_job_id))

    def release_lease_after_job(self, instance_id: str, run_id: str, backup_job_id: str) -> bool:
        """Release a lease kept for a backup job that is now terminal; False if the lease
        is not kept for that job (never was, or released already)."""
        return self._applied(sm.release_lease_after_job(instance_id, run_id, backup_job_id))

    # -- correlation ---------------------------------------------------------------------

    def record_command(
        self,
        command_id: str,
        run_id: str,
        group_id: str,
        phase: Phase,
        instance_ids: list[str],
        now_epoch: int,
    ) -> None:
        """A script command was sent to `instance_ids` (members of one group): their
        results note it as sent, with its id, and the command's item names the group, all
        in one transaction: a report that finds the command finds every member noting it."""
        annotations = [
            sm.annotate_phase(run_id, group_id, i, phase, {"sent": True, "command_id": command_id})
            for i in instance_ids
        ]
        if len(annotations) >= sm.TRANSACTION_SIZE:
            raise ValueError(f"one command names at most {sm.TRANSACTION_SIZE - 1} members")
        expires_at = self.expiry(now_epoch)
        put = sm.put_command(command_id, run_id, group_id, phase, expires_at)
        self._write(sm.Transaction((*annotations, put)) if annotations else put)

    def get_command(self, command_id: str) -> dict[str, Any] | None:
        return self._get(sm.command_key(command_id))

    def record_jobs(
        self, run_id: str, group_id: str, jobs: list[StartedJob], now_epoch: int
    ) -> None:
        """Backup jobs were started for members of a group: each job's item names its
        instance, and the instance's BACKUP result notes the job, together, in
        transactions (a job's report finds its member noting it)."""
        expires_at = self.expiry(now_epoch)

        def build(batch: list[StartedJob]) -> list[sm.Single]:
            return [
                write
                for job in batch
                for write in (
                    sm.put_job(
                        job.backup_job_id, run_id, group_id, job.instance_id, expires_at,
                        {"at_capture": "volumes" in job.noted,
                         "windows_vss": bool(job.noted.get("windows_vss"))},
                    ),
                    sm.annotate_phase(run_id, group_id, job.instance_id, Phase.BACKUP,
                                      {"backup_job_id": job.backup_job_id} | job.noted),
                )
            ]  # fmt: skip

        self._apply_batched(jobs, build, sm.TRANSACTION_SIZE // 2)

    def get_job(self, backup_job_id: str) -> dict[str, Any] | None:
        return self._get(sm.job_key(backup_job_id))

    def flag_jobs(self, backup_job_ids: list[str], name: str) -> None:
        """`sm.flag_job` for many jobs, in transactions."""

        def build(batch: list[str]) -> list[sm.Single]:
            return [sm.flag_job(job_id, name) for job_id in batch]

        self._apply_batched(backup_job_ids, build, sm.TRANSACTION_SIZE)


def _due_order(key: dict[str, Any]) -> tuple[Any, str, str]:
    """Earliest first; items due at the same second in key order (both tables agree)."""
    return key[sm.DUE_AT], key[sm.PARTITION_KEY], key[sm.SORT_KEY]
