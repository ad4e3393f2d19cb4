"""The fault schedules of the property test: a fleet, a run input, and the faults AWS may
deal it, each fault kind one entry of `FAULT_KINDS`.

A kind draws its parameters from the fleet (`strategy`) and applies them to the local
cloud before the run starts (`apply`): it sets a field of `Behaviour`, a refusal of the
emulation, or publishes an event at a drawn moment. A new kind of fault is one entry.
Kinds that today's code cannot survive yet are named in `PENDING_FIXES` and not drawn
(set `PREPOST_PENDING_FAULTS=1` to draw them too, e.g. once their fixes land).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from chalicelib.logic.decisions import run_id_for
from chalicelib.models.events import AwsEvent
from prepost.local.cloud import HANG, LocalCloud
from tests.conftest import VAULT, seed_input

SSM_FAILURES = ["Failed", "TimedOut", "Cancelled", "Undeliverable", "Execution Timed Out", HANG]
BACKUP_FAILURES = ["FAILED", "ABORTED", "EXPIRED", "PARTIAL", "RUNNING"]  # RUNNING: never ends
# Every AWS operation the handlers make (the reads only crash on DynamoDB's store; the
# in-memory store names its writes as their DynamoDB calls, so writes crash on both).
CRASHABLE = [
    "ListCommands", "ListCommandInvocations", "StopInstances",
    "StartInstances", "DescribeInstances", "StartBackupJob", "ListBackupJobs",
    "PutEvents", "GetItem", "Query", "PutItem", "UpdateItem", "DeleteItem",
    "TransactWriteItems", "SendMessage", "DescribeVolumes", "DescribeImages", "DescribeSnapshots",
]  # fmt: skip
HANDLERS = [
    "start_run_handler", "cancel_run", "run_scripts", "stop_instances", "start_backups",
    "start_instances", "script_invocation_changed", "instance_state_changed",
    "backup_job_changed", "finalize_group", "reconcile_runs", "check_capture",
]  # fmt: skip
PHASE = st.sampled_from(["PRE_SCRIPT", "POST_SCRIPT"])
# Not PutItem: run_scripts' put of a command id right after SendCommand is the case of
# crash_after_send (pending).
CRASH_AT_CALL = ["UpdateItem", "TransactWriteItems", "DeleteItem", "PutEvents", "StartBackupJob"]
APP_EVENTS = [
    "PrePostBackup Run Started", "PrePostBackup Phase Requested",
    "PrePostBackup Phase Completed", "PrePostBackup Run Completed",
]  # fmt: skip
# Final refusals of SendCommand (the whole command is refused when one instance is).
SEND_COMMAND_ERRORS = ["InvalidInstanceId", "UnsupportedPlatformType"]
STORES = ["memory"] * 9 + ["dynamodb"]  # one in ten on moto's DynamoDB (slower)
START_AT = 1  # virtual seconds: the start event is put after a cancel "before" it
CANCEL = "PrePostBackup Cancel Requested"


@dataclass
class Schedule:
    """One fleet, one run input, the faults; everything a schedule needs to repeat."""

    size: int
    groups: int  # clusters of the tag `cluster`
    group_by: str  # "run", "tag" (tag:cluster) or "instance"
    stopped_before: int
    start_stop: bool
    pre_script: bool
    post_script: bool
    abort: bool
    seed: int  # the fault decisions that hash event ids
    faults: tuple[tuple[str, Any], ...] = ()  # (kind, parameters), applied in order
    cloud_seed: int = 0  # the ids local mode hands out
    store: str = "memory"  # "memory" or "dynamodb"
    notes: list[str] = field(default_factory=list)
    part_size: int = 100  # the stage's PREPOST_GROUP_PART_SIZE: small ones make parts

    def fault(self, kind: str) -> Any:
        return next((params for name, params in self.faults if name == kind), None)


@dataclass
class Setup:
    """What a fault kind acts on: the cloud, the fleet, the run it is about."""

    cloud: LocalCloud
    schedule: Schedule
    ids: list[str]
    detail: dict[str, Any]
    run_id: str


@dataclass(frozen=True)
class FaultKind:
    strategy: Callable[[int], st.SearchStrategy[Any]]  # from the fleet size
    apply: Callable[[Setup, Any], None]


def chance(schedule: Schedule, event: dict[str, Any], what: str) -> float:
    """A number in [0, 1) fixed by the schedule, the event and the question."""
    digest = hashlib.sha256(f"{schedule.seed}/{event['id']}/{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# -- how each kind acts ---------------------------------------------------------------------


def _script_failures(setup: Setup, failures: list[tuple[int, str, str]]) -> None:
    for n, phase, status in failures:
        setup.cloud.behaviour.script_status[(setup.ids[n], phase)] = status


def _backup_failures(setup: Setup, failures: list[tuple[int, str]]) -> None:
    for n, state in failures:
        setup.cloud.behaviour.backup_state[setup.ids[n]] = state


def _power_errors(setup: Setup, errors: list[tuple[int, str]]) -> None:
    for n, operation in errors:
        code = "UnsupportedOperation" if operation == "StopInstances" else (
            "InsufficientInstanceCapacity")  # fmt: skip
        setup.cloud.behaviour.power_errors[(setup.ids[n], operation)] = code


def _throttled_backups(setup: Setup, throttled: list[tuple[int, int]]) -> None:
    for n, times in throttled:
        setup.cloud.backup.refuse[setup.ids[n]] = ["LimitExceededException"] * times


def _delivery(setup: Setup, rates: tuple[float, float, float]) -> None:
    """Duplicates, drops (never of a start event: one that was put is delivered), delays."""
    duplicate_rate, drop_rate, delay_rate = rates
    schedule, behaviour = setup.schedule, setup.cloud.behaviour

    def copies(event: dict[str, Any]) -> int:
        return 2 if chance(schedule, event, "dup") < duplicate_rate else 1

    def lose(event: dict[str, Any]) -> bool:
        is_start = event["detail-type"] == "BackupSolution-PrePostScript"
        return not is_start and chance(schedule, event, "drop") < drop_rate

    def delay(event: dict[str, Any]) -> float:
        if chance(schedule, event, "late") < delay_rate:
            return 1 + chance(schedule, event, "by") * 900
        return 0

    behaviour.copies, behaviour.lose_event, behaviour.delay = copies, lose, delay


def _crash_after(setup: Setup, crash: tuple[str, int]) -> None:
    operation, times = crash
    setup.cloud.behaviour.crash_after[operation] = times


def _crash_at_call(setup: Setup, crash: tuple[str, str, int]) -> None:
    handler, operation, nth = crash
    setup.cloud.behaviour.crash_at_call[(handler, operation)] = nth


def _refused_events(setup: Setup, refused: tuple[str, int]) -> None:
    detail_type, times = refused
    setup.cloud.behaviour.refuse_events[detail_type] = times


def _send_command_errors(setup: Setup, errors: list[tuple[int, str]]) -> None:
    for n, code in errors:
        setup.cloud.behaviour.send_command_errors[setup.ids[n]] = code


def _concurrent_copies(setup: Setup, on: bool) -> None:
    setup.cloud.behaviour.concurrent_copies = on
    if setup.schedule.fault("delivery") is None:  # copies to deliver at the same moment
        _delivery(setup, (0.3, 0.0, 0.0))


def _second_run(setup: Setup, after: int) -> None:
    second = setup.cloud.start_event(setup.detail)
    setup.cloud.publish(second, delay=START_AT + after)


def _cancel(setup: Setup, at: float) -> None:
    """An operator's cancel, `at` virtual seconds after the start event (-1: put before it)."""
    event = setup.cloud.start_event({"run_id": setup.run_id, "reason": "operator asked"})
    event["detail-type"] = CANCEL
    # After the start event when `at` >= 0 (the start event is put last, at START_AT).
    setup.cloud.publish(event, delay=0 if at < 0 else START_AT + at + 0.001)


PHASE_REQUESTED = "PrePostBackup Phase Requested"
RUN_COMPLETED = "PrePostBackup Run Completed"


def _cancel_in(phase: str) -> Callable[[Setup, int], None]:
    """A cancel `offset` seconds after the run's first Phase Requested of `phase` was put
    ("DONE": after its Run Completed), whether that event is then delivered, late or
    lost; none if the run ends without it. Phase events, not clock times, so that retries
    and delays elsewhere in the schedule do not move the cancel to another phase. The
    watch chains `Behaviour.delay`, which the emulation asks about every event put."""

    def apply(setup: Setup, offset: int) -> None:
        behaviour, before = setup.cloud.behaviour, setup.cloud.behaviour.delay
        fired = False

        def watch(event: dict[str, Any]) -> float:
            nonlocal fired
            detail = event.get("detail") or {}
            ours = isinstance(detail, dict) and detail.get("run_id") == setup.run_id
            if (
                not fired
                and ours
                and (
                    (phase == "DONE" and event["detail-type"] == RUN_COMPLETED)
                    or (event["detail-type"] == PHASE_REQUESTED and detail.get("phase") == phase)
                )
            ):
                fired = True
                _cancel(setup, offset - START_AT)
            return before(event) if before else 0

        behaviour.delay = watch

    return apply


def _agents_offline(setup: Setup, offline: list[tuple[int, int | None]]) -> None:
    for n, back_after in offline:
        setup.cloud.behaviour.agent_offline.add(setup.ids[n])
        if back_after is not None:
            setup.cloud.set_agent_online(setup.ids[n], after=START_AT + back_after)


# (operation, error code) refused for a while: transient per docs/aws-facts.md.
THROTTLES = [
    ("SendCommand", "ThrottlingException"),
    ("SendCommand", "InvalidInstanceId"),  # final for a pre-script, transient for a post
    ("StopInstances", "RequestLimitExceeded"),
    ("StartInstances", "RequestLimitExceeded"),
    ("StartInstances", "InsufficientInstanceCapacity"),
]


def _throttled_calls(setup: Setup, refusals: list[tuple[Any, ...]]) -> None:
    """(instance, (operation, code), times[, calls let through first])."""
    for n, (operation, code), times, *first in refusals:
        refused = setup.cloud.behaviour.refuse_calls.setdefault((setup.ids[n], operation), [])
        refused += [""] * (first[0] if first else 0) + [code] * times


def _terminations(setup: Setup, terminated: list[tuple[int, int]]) -> None:
    for n, after in terminated:
        setup.cloud.terminate([setup.ids[n]], after=START_AT + after)


RELEASE_AFTER = ["CAPTURE", "BACKUP_COMPLETED"]
CAPTURE_KNOBS = ["backup_never_runs", "snapshot_fails", "volume_attached_after_freeze"]


def _capture_knobs(setup: Setup, knobs: list[tuple[int, str]]) -> None:
    """How these instances' jobs capture: never run (expire), a failed snapshot, a volume
    attached after the freeze."""
    for n, knob in knobs:
        getattr(setup.cloud.behaviour, knob).add(setup.ids[n])


def _slow_image(setup: Setup, seconds: int) -> None:
    """Every job's AMI appears this long after the job runs (past the freeze budget?)."""
    setup.cloud.behaviour.backup_image_seconds = seconds


def _release_option(setup: Setup, option: tuple[str, int]) -> None:
    """The input's ReleaseAfter and MaxFreezeSeconds."""
    release_after, max_freeze = option
    setup.detail["ReleaseAfter"] = release_after
    setup.detail["MaxFreezeSeconds"] = max_freeze


def _indexed(size: int, *parts: st.SearchStrategy[Any], most: int = 2) -> Any:
    return st.lists(st.tuples(st.integers(0, size - 1), *parts), min_size=1, max_size=most)


FAULT_KINDS: dict[str, FaultKind] = {
    "script_failures": FaultKind(
        lambda n: _indexed(n, PHASE, st.sampled_from(SSM_FAILURES), most=3),
        _script_failures,
    ),
    "backup_failures": FaultKind(
        lambda n: _indexed(n, st.sampled_from(BACKUP_FAILURES)), _backup_failures
    ),
    "power_errors": FaultKind(
        lambda n: _indexed(n, st.sampled_from(["StopInstances", "StartInstances"])),
        _power_errors,
    ),
    "throttled_backups": FaultKind(lambda n: _indexed(n, st.integers(1, 2)), _throttled_backups),
    "delivery": FaultKind(lambda n: st.tuples(*[st.sampled_from([0.0, 0.1, 0.3])] * 3), _delivery),
    "crash_after": FaultKind(
        lambda n: st.tuples(st.sampled_from(CRASHABLE), st.integers(1, 2)), _crash_after
    ),
    "crash_after_send": FaultKind(
        lambda n: st.tuples(st.just("SendCommand"), st.integers(1, 2)), _crash_after
    ),
    "crash_after_batch_write": FaultKind(
        lambda n: st.tuples(st.just("BatchWriteItem"), st.integers(1, 2)), _crash_after
    ),
    # One handler dies after its n-th state write (or call): half-way through marking a
    # phase's members, right after activating a run, between a result and its barrier.
    "crash_at_call": FaultKind(
        lambda n: st.tuples(
            st.sampled_from(HANDLERS),
            st.sampled_from(CRASH_AT_CALL),
            st.integers(1, n + 2),
        ),
        _crash_at_call,
    ),
    "refused_events": FaultKind(
        lambda n: st.tuples(st.sampled_from(APP_EVENTS), st.integers(1, 3)), _refused_events
    ),
    "send_command_errors": FaultKind(
        lambda n: _indexed(n, st.sampled_from(SEND_COMMAND_ERRORS)), _send_command_errors
    ),
    "concurrent_copies": FaultKind(lambda n: st.just(True), _concurrent_copies),
    "second_run": FaultKind(lambda n: st.integers(0, 3 * 3600), _second_run),
    # Cancels at any moment: before the start event (and so before the run exists), in
    # each phase, after the run ended.
    "cancel_before_start": FaultKind(lambda n: st.just(-1), _cancel),
    "cancel_in_pre_script": FaultKind(lambda n: st.integers(0, 20), _cancel_in("PRE_SCRIPT")),
    "cancel_in_stop": FaultKind(lambda n: st.integers(0, 30), _cancel_in("STOP")),
    "cancel_in_backup": FaultKind(lambda n: st.integers(0, 7000), _cancel_in("BACKUP")),
    "cancel_in_start": FaultKind(lambda n: st.integers(0, 30), _cancel_in("START")),
    "cancel_in_post_script": FaultKind(lambda n: st.integers(0, 20), _cancel_in("POST_SCRIPT")),
    "cancel_after_end": FaultKind(lambda n: st.integers(0, 600), _cancel_in("DONE")),
    # SSM agents that do not answer (Pending -> Delayed -> Delivery Timed Out), some back
    # after a while (seconds), some never (None).
    "agents_offline": FaultKind(
        lambda n: _indexed(n, st.none() | st.integers(60, 3 * 3600)), _agents_offline
    ),
    # Calls refused for a while, then let through: throttled sends, stops and starts, and
    # a post-script refused while the agent re-registers after a start.
    "throttled_calls": FaultKind(
        lambda n: _indexed(n, st.sampled_from(THROTTLES), st.integers(1, 3), most=3),
        _throttled_calls,
    ),
    # An instance terminated by someone else mid-run, its EC2 events sometimes lost too.
    "terminations": FaultKind(lambda n: _indexed(n, st.integers(0, 4 * 3600)), _terminations),
    "capture_knobs": FaultKind(
        lambda n: _indexed(n, st.sampled_from(CAPTURE_KNOBS)), _capture_knobs
    ),
    "slow_image": FaultKind(lambda n: st.sampled_from([120, 400, 900]), _slow_image),
    "release_option": FaultKind(
        lambda n: st.tuples(st.sampled_from(RELEASE_AFTER), st.integers(30, 600)),
        _release_option,
    ),
}


def _lost_ec2_events(setup: Setup, lost: list[int]) -> None:
    """Every EC2 state-change event of these instances is lost."""
    behaviour, before = setup.cloud.behaviour, setup.cloud.behaviour.lose_event
    gone = {setup.ids[n] for n in lost}

    def lose(event: dict[str, Any]) -> bool:
        detail = event.get("detail") or {}
        ec2 = event.get("source") == "aws.ec2" and isinstance(detail, dict)
        return (ec2 and detail.get("instance-id") in gone) or bool(before and before(event))

    behaviour.lose_event = lose


def _lost_completions(setup: Setup, on: bool) -> None:
    """Every Phase Completed that ends a group (next phase DONE) is lost."""
    behaviour, before = setup.cloud.behaviour, setup.cloud.behaviour.lose_event

    def lose(event: dict[str, Any]) -> bool:
        detail = event.get("detail") or {}
        done = isinstance(detail, dict) and detail.get("next_phase") == "DONE"
        return (on and done) or bool(before and before(event))

    behaviour.lose_event = lose


# Kinds that the targeted schedules use and the generator does not draw (drawing a new
# kind would change every drawn schedule).
TARGETED_KINDS: dict[str, FaultKind] = {
    "lost_completions": FaultKind(lambda n: st.just(True), _lost_completions),
    "lost_ec2_events": FaultKind(
        lambda n: st.lists(st.integers(0, n - 1), min_size=1, max_size=2), _lost_ec2_events
    ),
}

# Kinds today's code cannot survive; each is fixed by another engineer's item of issue 12.
PENDING_FIXES: set[str] = set()


def drawn_kinds() -> list[str]:
    if os.environ.get("PREPOST_PENDING_FAULTS") == "1":
        return list(FAULT_KINDS)
    return [name for name in FAULT_KINDS if name not in PENDING_FIXES]


PART_SIZES = (100, 100, 2, 3, 5)


@st.composite
def schedules(draw: Any) -> Schedule:
    # Rarely a fleet over 50 (more than one SendCommand per phase), on the memory store.
    large = draw(st.integers(0, 29)) == 29
    size = draw(st.integers(51, 60) if large else st.integers(5, 20))
    group_by = draw(st.sampled_from(["run", "tag", "tag", "instance"]))
    faults = []
    for name in drawn_kinds():
        params = draw(st.none() | FAULT_KINDS[name].strategy(size))
        if params is not None:
            faults.append((name, params))
    return Schedule(
        size=size,
        groups=draw(st.integers(2, 3)) if group_by == "tag" else 1,
        group_by=group_by,
        stopped_before=draw(st.integers(0, 2)),
        start_stop=draw(st.booleans()),
        pre_script=draw(st.booleans()),
        post_script=draw(st.booleans()),
        abort=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32)),
        faults=tuple(faults),
        cloud_seed=draw(st.integers(0, 10**6)),
        store="memory" if large else draw(st.sampled_from(STORES)),
        # Groups larger than this run as parts that meet at a barrier between phases.
        part_size=draw(st.sampled_from(PART_SIZES)),
    )


def input_for(schedule: Schedule) -> dict[str, Any]:
    group_by = {"tag": "tag:cluster"}.get(schedule.group_by, schedule.group_by)
    detail = seed_input() | {
        "StartStopEC2Required": schedule.start_stop,
        "OnPreScriptFailure": "abort" if schedule.abort else "continue",
        "GroupBy": group_by,
    }
    scripts = detail["RemoteRunCommandDetails"]
    if not schedule.pre_script:
        del scripts["PreBackupScriptDetails"]
    if not schedule.post_script:
        del scripts["PostBackupScriptDetails"]
    detail["BackupDetails"]["CompleteWindowMinutes"] = 240
    return detail


def start(cloud: LocalCloud, schedule: Schedule) -> list[str]:
    """Launch the fleet, apply the faults, put the start event; the fleet's ids."""
    cloud.create_vault(VAULT)
    if schedule.part_size != 100:
        cloud.configure_stage(PREPOST_GROUP_PART_SIZE=str(schedule.part_size))
    if schedule.group_by == "instance":  # counted in tallies of two groups
        cloud.configure_stage(PREPOST_TALLY_GROUPS="2")
    ids: list[str] = []
    for cluster in range(schedule.groups):
        members = len(range(cluster, schedule.size, schedule.groups))
        ids += cloud.launch(members, tags={"backup-job": "true", "cluster": f"c{cluster}"})
    if schedule.stopped_before:
        cloud.ec2.stop_instances(InstanceIds=ids[: schedule.stopped_before])
    detail = input_for(schedule)
    first = cloud.start_event(detail)
    run_id = run_id_for(first["id"], AwsEvent.model_validate(first).time)
    setup = Setup(cloud, schedule, ids, detail, run_id)
    for name, params in schedule.faults:
        (FAULT_KINDS | TARGETED_KINDS)[name].apply(setup, params)
    cloud.publish(first, delay=START_AT)
    return ids
