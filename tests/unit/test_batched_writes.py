"""Writes of many members go in transactions of up to a hundred; a transaction refused
because one member's precondition failed is halved until that member is alone, and every
other member's write applies."""

from __future__ import annotations

from chalicelib.models.state import (
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseResult,
    PhaseStatus,
)
from prepost.local.memory_store import InMemoryStateStore

RUN, GROUP, PHASE = "r1", "g1", Phase.PRE_SCRIPT
IN_PROGRESS = PhaseResult(status=PhaseStatus.IN_PROGRESS)


def store_with(members: int) -> tuple[InMemoryStateStore, list[str], list[str]]:
    """A group OPEN in PRE_SCRIPT with `members` PENDING members; the writes made."""
    writes: list[str] = []
    store = InMemoryStateStore(after_write=writes.append)
    ids = [f"i-{n:04d}" for n in range(members)]
    group = GroupRecord(
        run_id=RUN,
        group_id=GROUP,
        label="all",
        size=members,
        phase=PHASE,
        phase_state=GroupPhaseState.OPEN,
        pending=members,
    )
    pending = {PHASE: PhaseResult(status=PhaseStatus.PENDING)}
    instances = [
        InstanceRecord(
            run_id=RUN, group_id=GROUP, instance_id=i, original_state="running", phases=pending
        )
        for i in ids
    ]
    store.put_groups_and_instances([group], instances, now_epoch=0)
    writes.clear()
    return store, ids, writes


def test_marks_of_250_members_take_three_transactions() -> None:
    store, ids, writes = store_with(250)
    marked = store.start_phases(RUN, GROUP, PHASE, ids, IN_PROGRESS, PhaseStatus.PENDING)
    assert sorted(marked) == ids
    assert writes == ["TransactWriteItems"] * 3


def test_one_member_not_as_expected_is_isolated_and_the_rest_apply() -> None:
    store, ids, writes = store_with(100)
    already = ids[37]
    store.set_phase_result(RUN, GROUP, already, PHASE, IN_PROGRESS, PhaseStatus.PENDING)
    writes.clear()
    marked = store.start_phases(RUN, GROUP, PHASE, ids, IN_PROGRESS, PhaseStatus.PENDING)
    assert sorted(marked) == [i for i in ids if i != already]
    # Halving 100 down to the one refused member: about 2 calls per level, not 100.
    assert len(writes) <= 2 * 7 + 1


def test_skipped_members_are_counted_in_their_group_once_per_transaction() -> None:
    store, ids, writes = store_with(150)
    fields = {i: {"ended_at": "2026-12-05T00:00:00Z"} for i in ids}
    ended = store.finish_phases(
        RUN, GROUP, PHASE, PhaseStatus.SKIPPED, fields, expected=PhaseStatus.PENDING
    )
    assert sorted(ended) == ids
    group = store.get_group(RUN, GROUP)
    assert group is not None
    assert group.pending == 0
    assert group.count(PHASE, PhaseStatus.SKIPPED) == 150
    assert len(writes) == 2  # 99 members and the group, then 51 and the group
    # A repeat finds nothing PENDING: nothing changes, the group is not counted twice.
    again = store.finish_phases(
        RUN, GROUP, PHASE, PhaseStatus.SKIPPED, fields, expected=PhaseStatus.PENDING
    )
    assert again == []
    group = store.get_group(RUN, GROUP)
    assert group is not None
    assert group.count(PHASE, PhaseStatus.SKIPPED) == 150
