"""Contract: the in-memory store and the DynamoDB store are one store.

Random sequences of operations go through the `Store` protocol of both, side by side: the
DynamoDB store on moto's DynamoDB (called in process, `prepost/local/fast_dynamodb.py`) and
the in-memory one. Ids, times and states are drawn from small sets, so that writes often
meet, and are refused by, each other's preconditions; a step may also die right after its
n-th write call (a handler killed mid-way), which splits a batch of puts that is not one
transaction. After every step both stores must have answered the same (a value, or the
same error) and hold the same items, key for key and attribute for attribute.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from chalicelib.errors import GatewayError
from chalicelib.gateways.state_store import StateStore, create_table, from_item
from chalicelib.models.events import CancelRequest
from chalicelib.models.profile import Profile
from chalicelib.models.state import (
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
    StartedJob,
    TallyRecord,
)
from chalicelib.store import Store
from prepost.local.cloud import ACCOUNT
from prepost.local.fast_dynamodb import FastDynamoDB
from prepost.local.memory_store import InMemoryStateStore

pytestmark = pytest.mark.slow

SEQUENCES = int(os.environ.get("PREPOST_STORE_SEQUENCES", "500"))
REGION = "us-east-1"
WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}

# Few values, the first ones most often: a write must often find the state its
# precondition asks for, and often not.
runs = st.sampled_from(["r1", "r1", "r1", "r2"])
groups = st.sampled_from(["g1", "g1", "g2"])
due_groups = st.sampled_from(["", "g1", "g2"])  # "" names the run header, as due_items does
instances = st.sampled_from(["i1", "i2", "i3"])
phases = st.sampled_from([Phase.PRE_SCRIPT, Phase.PRE_SCRIPT, Phase.STOP])
phase_statuses = st.sampled_from([PhaseStatus.IN_PROGRESS, *PhaseStatus])
epochs = st.integers(0, 4)
texts = st.sampled_from(["t1", "t2"])
reasons = st.none() | texts


class Crash(Exception):  # noqa: N818 - a simulated death, not an error of the code
    """The handler died right after a write call that succeeded."""


@dataclass
class Step:
    """One operation of the protocol, and whether the caller dies after its n-th write."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    crash_after: int | None

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        crash = f" (dies after write {self.crash_after})" if self.crash_after else ""
        return f"{self.name}({', '.join(arguments)}){crash}"


def call(name: str, *args: st.SearchStrategy[Any], **kwargs: st.SearchStrategy[Any]) -> Any:
    return st.builds(
        lambda a, k, crash: Step(name, tuple(a), k, crash),
        st.tuples(*args),
        st.fixed_dictionaries(kwargs),
        st.none() | st.integers(1, 2),
    )


def run_records() -> st.SearchStrategy[RunRecord]:
    return st.builds(
        RunRecord,
        run_id=runs,
        status=st.sampled_from([RunStatus.STARTING, RunStatus.RUNNING, RunStatus.FAILED]),
        created_at=texts,
        plan=st.lists(phases, max_size=2, unique=True),
        groups_total=st.integers(0, 2),
        instance_count=st.integers(0, 3),
    )


def phase_results() -> st.SearchStrategy[PhaseResult]:
    return st.builds(PhaseResult, status=phase_statuses, reason=reasons, command_id=reasons)


def instance_records(run_id: str, group_id: str, instance_id: str) -> Any:
    return st.builds(
        InstanceRecord,
        run_id=st.just(run_id),
        group_id=st.just(group_id),
        instance_id=st.just(instance_id),
        original_state=st.sampled_from(["running", "stopped"]),
        phases=st.dictionaries(phases, phase_results(), min_size=1, max_size=2),
    )


@st.composite
def fleets(
    draw: Any,
) -> tuple[list[GroupRecord], list[InstanceRecord], list[BarrierRecord], list[TallyRecord]]:
    """A run's groups (sometimes parts of a group, with its barrier; sometimes counted by
    tallies) and instances; sometimes more than one batch of puts (25)."""
    run_id = draw(runs)
    written = [
        GroupRecord(
            run_id=run_id,
            group_id=group_id,
            label=group_id,
            size=2,
            phase=draw(phases),
            phase_state=draw(st.sampled_from([GroupPhaseState.OPEN, *GroupPhaseState])),
            pending=draw(st.integers(0, 1)),
            claim_until=draw(st.none() | epochs),
            due_at=draw(st.none() | epochs),
            barrier=draw(st.none() | barriers),
            tally=draw(st.none() | tallies),
        )
        for group_id in draw(st.lists(groups, min_size=1, max_size=2, unique=True))
    ]
    counted = Counter(group.tally for group in written if group.tally is not None)
    meeting = {group.barrier for group in written if group.barrier}
    many = draw(st.sampled_from([3, 3, 3, 30]))  # beyond i1..i3: only to fill batches
    members = [f"i{n}" for n in range(1, many + 1)]
    return (
        written,
        [
            draw(instance_records(run_id, draw(st.sampled_from(written)).group_id, instance_id))
            for instance_id in members
        ],
        [BarrierRecord(run_id=run_id, barrier=b, label=b, parts=2) for b in sorted(meeting)],
        [TallyRecord(run_id=run_id, tally=t, pending=n) for t, n in sorted(counted.items())],
    )


def put_fleet() -> Any:
    return st.builds(
        lambda fleet, now, crash: Step(
            "put_groups_and_instances", (fleet[0], fleet[1], now, fleet[2], fleet[3]), {}, crash
        ),
        fleets(),
        epochs,
        st.none() | st.integers(1, 2),
    )


def profiles() -> st.SearchStrategy[Profile]:
    return st.builds(
        Profile,
        name=st.sampled_from(["p1", "p2"]),
        input_json=st.just("{}"),
        created_at=texts,
        updated_at=texts,
        last_slot=reasons,
    )


backup_jobs = st.sampled_from(["JOB-1", "JOB-2"])
barriers = st.sampled_from(["b1", "b1", "b2"])
tallies = st.sampled_from([0, 0, 1])


def parts() -> st.SearchStrategy[GroupRecord]:
    """A part of a group as a handler read it, arriving at its barrier."""
    return st.builds(
        GroupRecord,
        run_id=runs,
        group_id=groups,
        label=st.just("part"),
        size=st.just(2),
        phase=phases.map(str),
        phase_state=st.just(GroupPhaseState.OPEN),
        barrier=barriers,
        counts=st.dictionaries(
            st.sampled_from(["PRE_SCRIPT_SUCCEEDED", "PRE_SCRIPT_FAILED", "STOP_FAILED"]),
            st.integers(0, 3),
        ),
    )


def leases() -> st.SearchStrategy[Lease]:
    return st.builds(
        Lease,
        instance_id=instances,
        run_id=runs,
        group_id=groups,
        expires_at=epochs,
        backup_job_id=st.none() | backup_jobs,
    )


errors = st.sampled_from(["boom", "x" * 600])  # the second is kept cut to 500 characters
fields = st.dictionaries(st.sampled_from(["reason", "ended_at", "sent"]), texts, max_size=2)
annotations = st.dictionaries(st.sampled_from(["command_id", "backup_job_id"]), texts, min_size=1)
STEPS = st.one_of(
    call("put_run_if_new", run_records(), epochs, st.none() | epochs),
    call("activate_run", run_records(), epochs),
    call("reclaim_start", runs, epochs, epochs),
    call("mark_start_announced", runs, texts, epochs),
    call("reclaim_start_announcement", runs, epochs, epochs),
    call(
        "complete_run",
        runs,
        st.sampled_from([RunStatus.SUCCEEDED, RunStatus.FAILED]),
        st.dictionaries(st.sampled_from(["SUCCEEDED", "FAILED"]), st.integers(0, 3)),
        reasons,
        texts,
        epochs,
    ),
    call("mark_announced", runs, texts),
    call("cancel_run", runs, texts, reasons),
    call("keep_cancel", st.builds(CancelRequest, run_id=runs, reason=reasons), texts, epochs),
    call("pending_cancel", runs),
    call("rearm_run", runs, epochs),
    call("mark_run_notified", runs, texts),
    call("unmark_run_notified", runs, texts),
    call("due_items", epochs),
    call("note_due_failure", runs, due_groups, errors, epochs),
    call("set_aside", runs, due_groups, texts),
    put_fleet(),
    call("get_run", runs),
    call("get_group", runs, groups),
    call("list_groups", runs),
    call("get_instance", runs, groups, instances),
    call("list_instances", runs, st.none() | groups),
    call("open_phase", runs, groups, phases, st.integers(0, 2), epochs, epochs, epochs),
    call("claim_phase", runs, groups, phases, epochs, epochs),
    call("rearm", runs, groups, phases.map(str), epochs),
    call("request_again", runs, groups, phases, epochs),
    call("cancel_group", runs, groups),
    call("annotate_late_report", runs, groups, instances, phases, phase_statuses.map(str), texts),
    call(
        "set_phase_result",
        runs,
        groups,
        instances,
        phases,
        phase_results(),
        phase_statuses,
    ),
    st.builds(
        lambda r, g, i, p, f, crash: Step("annotate_phase", (r, g, i, p), f, crash),
        runs,
        groups,
        instances,
        phases,
        annotations,
        st.none() | st.integers(1, 2),
    ),
    call(
        "start_phases",
        runs,
        groups,
        phases,
        st.lists(instances, max_size=3, unique=True),
        phase_results(),
        phase_statuses,
    ),
    call(
        "annotate_phases",
        runs,
        groups,
        phases,
        st.dictionaries(instances, annotations, max_size=3),
    ),
    call("mark_terminated", runs, groups, instances),
    call(
        "finish_phases",
        runs,
        groups,
        phases,
        phase_statuses,
        st.dictionaries(instances, fields, min_size=1, max_size=3),
        st.sampled_from([PhaseStatus.IN_PROGRESS, PhaseStatus.PENDING]),
    ),
    call(
        "finish_phase",
        runs,
        groups,
        instances,
        phases,
        phase_statuses,
        fields,
        st.sampled_from([PhaseStatus.IN_PROGRESS, PhaseStatus.PENDING]),
    ),
    call("advance_group", runs, groups, phases, st.none() | phases, st.booleans(), epochs),
    call("get_barrier", runs, barriers),
    call("drop_group", runs, groups),
    call("arrive_at_barrier", parts(), phases, st.booleans(), epochs),
    call("release_group", runs, groups, phases, st.booleans(), epochs),
    call("finish_group", runs, groups, st.none() | tallies, st.booleans()),
    call("get_tally", runs, tallies),
    call(
        "set_instance_outcomes",
        runs,
        st.lists(
            st.tuples(groups, instances, st.sampled_from(list(InstanceStatus)), reasons),
            max_size=3,
            unique_by=lambda outcome: outcome[:2],
        ),
    ),
    call("put_profile", profiles()),
    call("get_profile", st.sampled_from(["p1", "p2"])),
    call("list_profiles"),
    call("delete_profile", st.sampled_from(["p1", "p2"])),
    call("advance_profile", st.sampled_from(["p1", "p2"]), texts, reasons, texts),
    call("acquire_lease", leases(), epochs),
    call(
        "acquire_leases",
        st.lists(leases(), max_size=4, unique_by=lambda lease: lease.instance_id),
        epochs,
    ),
    call("get_lease", instances),
    call("release_lease", instances, runs),
    call("release_leases", st.lists(instances, max_size=3, unique=True), runs),
    call("hold_lease_for_job", instances, runs, backup_jobs),
    call("release_lease_after_job", instances, runs, backup_jobs),
    call(
        "record_command",
        texts,
        runs,
        groups,
        phases,
        st.lists(instances, max_size=3, unique=True),
        epochs,
    ),
    call("get_command", texts),
    call(
        "record_jobs",
        runs,
        groups,
        st.lists(
            st.builds(StartedJob, instances, backup_jobs, st.just({"sent": True})),
            max_size=2,
            unique_by=(lambda job: job.instance_id, lambda job: job.backup_job_id),
        ),
        epochs,
    ),
    call("get_job", texts),
)


OPENING = st.tuples(call("put_run_if_new", run_records(), epochs, st.none() | epochs), put_fleet())
# Steps on a group (run id, group id, phase first) and on an instance (run id, group id,
# instance id, phase first), which `aimed` may point at an item that exists.
ON_GROUP = {
    "open_phase",
    "claim_phase",
    "rearm",
    "request_again",
    "advance_group",
    "finish_group",
    "cancel_group",
    "drop_group",
    "start_phases",
    "annotate_phases",
    "finish_phases",
}
ON_INSTANCE = {
    "finish_phase",
    "set_phase_result",
    "annotate_late_report",
    "annotate_phase",
    "mark_terminated",
    "get_instance",
}


def aimed(step: Step, items: list[dict[str, Any]], data: Any) -> Step:
    """`step`, or (drawn) the same step on an item that exists, in the phase it is in, so
    that preconditions hold often enough to matter; they still fail often."""
    if step.name not in ON_GROUP | ON_INSTANCE or not data.draw(st.booleans()):
        return step
    kind = "GROUP#" if step.name in ON_GROUP else "INST#"
    targets = [item for item in items if item["sk"].startswith(kind)]
    if not targets:
        return step
    target = data.draw(st.sampled_from(targets))
    args = list(step.args)
    args[:2] = [target["run_id"], target["group_id"]]
    if step.name == "finish_group":
        args[2] = target.get("tally")  # counted by the tally it has (or none)
    elif kind == "GROUP#":
        if len(args) > 2 and target["phase"] in set(Phase):
            args[2] = type(args[2])(target["phase"])  # a Phase, or its text (rearm)
    else:
        args[2] = target["instance_id"]
        if len(args) > 3 and target["phases"]:
            phase = data.draw(st.sampled_from(sorted(target["phases"])))
            args[3] = Phase(phase)
            if step.name == "set_phase_result":
                args[5] = PhaseStatus(target["phases"][phase]["status"])
    return Step(step.name, tuple(args), step.kwargs, step.crash_after)


def plain(value: Any) -> Any:
    """An answer as comparable data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


class Stores:
    """The two stores, fresh for each sequence, and a way to kill a step after a write."""

    def __init__(self) -> None:
        session = boto3.session.Session(region_name=REGION)
        FastDynamoDB(ACCOUNT, REGION).register(session.events)
        session.events.register("after-call.dynamodb.*", self._after_dynamodb_call)
        self.client = session.client("dynamodb")
        self._tables = itertools.count()
        self._writes_left: int | None = None
        self.table = ""

    def fresh(self) -> tuple[StateStore, InMemoryStateStore]:
        if self.table:
            self.client.delete_table(TableName=self.table)
        self.table = f"contract-{next(self._tables)}"
        create_table(self.client, self.table)
        return (
            StateStore(self.client, self.table, retention_seconds=1000),
            InMemoryStateStore(retention_seconds=1000, after_write=self._wrote),
        )

    def dynamodb_items(self) -> list[dict[str, Any]]:
        items = [from_item(i) for i in self.client.scan(TableName=self.table)["Items"]]
        return sorted(items, key=lambda item: (item["pk"], item["sk"]))

    @contextmanager
    def dying_after(self, writes: int | None) -> Iterator[None]:
        self._writes_left = writes
        try:
            yield
        finally:
            self._writes_left = None

    def _after_dynamodb_call(self, http_response: Any, model: Any, **_: Any) -> None:
        if model.name in WRITES and http_response.status_code < 300:
            self._wrote(model.name)

    def _wrote(self, operation: str) -> None:
        if self._writes_left is not None:
            self._writes_left -= 1
            if self._writes_left == 0:
                raise Crash(f"died after {operation}")


def outcome(stores: Stores, store: Store, step: Step) -> Any:
    method: Callable[..., Any] = getattr(store, step.name)
    try:
        with stores.dying_after(step.crash_after):
            return ("answered", plain(method(*step.args, **step.kwargs)))
    except Crash as crash:
        return ("died", str(crash))
    except GatewayError as error:
        return ("failed", error.code)
    except Exception as error:  # e.g. an item that no record can be read from
        return ("raised", type(error).__name__)


def test_both_stores_give_the_same_answers_and_items(record_property: Any) -> None:
    from moto import mock_aws

    seen = {"sequences": 0, "steps": 0, "differences": 0}
    with mock_aws():
        stores = Stores()

        @settings(
            max_examples=SEQUENCES,
            derandomize=True,  # the same sequences on every run
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(opening=OPENING, length=st.integers(5, 30), data=st.data())
        def one(opening: tuple[Step, Step], length: int, data: Any) -> None:
            seen["sequences"] += 1
            dynamodb, memory = stores.fresh()
            for number in range(length):
                step = (
                    opening[number] if number < 2 else aimed(data.draw(STEPS), memory.items(), data)
                )
                seen["steps"] += 1
                answers = (outcome(stores, dynamodb, step), outcome(stores, memory, step))
                items = (stores.dynamodb_items(), memory.items())
                if answers[0] != answers[1] or items[0] != items[1]:
                    seen["differences"] += 1
                assert answers[0] == answers[1], (number, step, answers)
                assert items[0] == items[1], (number, step, items)

        try:
            one()
        finally:
            line = (
                f"store contract: {seen['sequences']} sequences ({seen['steps']} steps),"
                f" differences: {seen['differences']}"
            )
            record_property("summary", line)
            print(line)
