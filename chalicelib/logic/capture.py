"""Release at capture: a frozen or stopped group goes on (START, POST_SCRIPT) as soon as its
members' data is captured, not when their backup jobs complete.

An EBS snapshot holds the data written before it was requested, and the volume may be used
again once the snapshot is `pending` (docs/aws-facts.md, "Capture"). An AWS Backup job of
an EC2 instance makes an AMI whose block device mappings list a snapshot of each volume;
AWS Backup copies the job's recovery point tags (here the run id and the instance id) to
that AMI. A member of a group in BACKUP is *captured* when its job is RUNNING, an AMI
tagged for it lists a snapshot of every volume recorded when the BACKUP phase began (the
instance frozen or stopped), and each of those snapshots is `pending` or `completed` and was
initiated after that moment.

AWS Backup's job events are best effort and do not say when the AMI exists, so capture is
polled: a group waiting for it gets a capture poll every `POLL_SECONDS` (backing off after
five minutes, `poll_delay`), an SQS message delayed that long, each of which looks at the
whole group in a few batched calls (ListBackupJobs, DescribeImages, DescribeSnapshots) and
sends the next while the group still waits. Polls are numbered on the group: a duplicate or
late message finds its number taken and does nothing; the reconciler looks too (every
`LOOK_SECONDS`) and starts the polls again if their chain broke.

A captured member is *released*: counted out of the group's `pending` (the phase's barrier)
and into its `jobs_pending`, while its BACKUP result stays IN_PROGRESS until its job is
terminal. In script mode, a group not captured within the input's `MaxFreezeSeconds` is
released anyway; what was not captured is labelled crash-consistent, with the reason. In
stop mode no budget applies: an instance stays stopped until its capture is seen, or
until its job is terminal.
"""

from __future__ import annotations

from datetime import timedelta

from chalicelib import observability
from chalicelib.clock import iso, parse_iso
from chalicelib.dependencies import Services
from chalicelib.gateways.ec2 import Image, Snapshot
from chalicelib.logic.transitions import close_phase
from chalicelib.models.events import CaptureCheck
from chalicelib.models.run_input import ReleaseAfter, RunInput
from chalicelib.models.state import (
    Consistency,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
)

POLL_SECONDS = 15  # between two capture polls of a group waiting for its capture ...
QUICK_POLLS = 20  # ... for its first 5 minutes; then twice as long each time, up to:
LOOK_SECONDS = 300  # the reconciler's look at such a group (a lost poll, a broken chain)
CAPTURED_SNAPSHOT_STATES = frozenset({"pending", "completed"})
# What a group counts its released members as, in `n_BACKUP_<count>`.
CAPTURED, RELEASED_AT_BUDGET = "CAPTURED", "RELEASED"
UNCAPTURED = "uncaptured"  # the flag on the job item of a member released at the budget


def at_capture(run_input: RunInput, plan: list[Phase]) -> bool:
    """Whether a run releases its groups at capture: asked for, and there is something to
    release (a start or a post-script after the backup)."""
    return run_input.release_after is ReleaseAfter.CAPTURE and (
        Phase.START in plan or Phase.POST_SCRIPT in plan
    )


def freeze_budget(run_input: RunInput) -> int | None:
    """How long a group may wait for its capture, frozen; None in stop mode (a stopped
    instance is not frozen: it stays stopped until its capture, or its job's end)."""
    return None if run_input.start_stop_ec2_required else run_input.max_freeze_seconds


def waits_for_capture(group: GroupRecord | None) -> bool:
    return (
        group is not None
        and group.phase == Phase.BACKUP
        and group.phase_state is GroupPhaseState.OPEN
        and group.jobs_deadline is not None  # armed: the run releases at capture
        and group.pending > 0
    )


def capture_of(
    result: PhaseResult, images: list[Image], snapshots: dict[str, Snapshot]
) -> dict[str, object] | None:
    """What to note on a member whose data one of `images` captured (the moment and the
    snapshots), or None: no image lists an initiated snapshot of each recorded volume."""
    if not result.volumes or result.started_at is None:
        return None  # nothing known to compare with: never released early
    frozen = parse_iso(result.started_at)
    for image in images:
        taken: dict[str, Snapshot] = {}
        for snapshot_id in image.snapshot_ids:
            snapshot = snapshots.get(snapshot_id)
            if (
                snapshot is not None
                and snapshot.state in CAPTURED_SNAPSHOT_STATES
                and snapshot.start_time >= frozen
            ):
                taken[snapshot.volume_id] = snapshot
        if all(volume in taken for volume in result.volumes):
            chosen = [taken[volume] for volume in result.volumes]
            return {
                "captured_at": iso(max(snapshot.start_time for snapshot in chosen)),
                "snapshot_ids": [snapshot.snapshot_id for snapshot in chosen],
            }
    return None


def awaiting(members: list[InstanceRecord]) -> list[InstanceRecord]:
    """The members whose job was started and who are neither released nor done."""
    return [
        member
        for member in members
        if (result := member.phase(Phase.BACKUP)).status is PhaseStatus.IN_PROGRESS
        and result.sent
        and result.backup_job_id
        and result.released_at is None
    ]


def observe(
    services: Services, run: RunRecord, run_input: RunInput, waiting: list[InstanceRecord]
) -> dict[str, dict[str, object]]:
    """Which of `waiting` are captured now (instance id: what to note), in a few calls for
    the whole group: their RUNNING jobs, the AMIs tagged for them, those AMIs' snapshots."""
    if not waiting:
        return {}
    since = min(parse_iso(m.phase(Phase.BACKUP).started_at or run.created_at) for m in waiting)
    vault = run_input.backup_details.backup_vault_name
    running = services.backup.running_jobs(vault, since - timedelta(seconds=1))
    candidates = [m for m in waiting if m.phase(Phase.BACKUP).backup_job_id in running]
    if not candidates:
        return {}
    images = services.ec2.backup_images(run.run_id, [m.instance_id for m in candidates])
    snapshot_ids = sorted(
        {s for found in images.values() for image in found for s in image.snapshot_ids}
    )
    snapshots = services.ec2.snapshots(snapshot_ids) if snapshot_ids else {}
    captured = {}
    for member in candidates:
        noted = capture_of(member.phase(Phase.BACKUP), images.get(member.instance_id, []),
                           snapshots)  # fmt: skip
        if noted is not None:
            captured[member.instance_id] = noted
    return captured


def arm(services: Services, run: RunRecord, run_input: RunInput, group: GroupRecord) -> None:
    """The group's jobs were started: it waits for its capture (within its freeze budget,
    if any) and gets its first capture poll. Idempotent: a resumed start arms it again and
    sends a poll whose number a live chain may already have taken."""
    now = services.now_epoch()
    budget = freeze_budget(run_input)
    until = group.capture_until or (None if budget is None else now + budget)
    deadline = group.deadline or now
    services.store.arm_capture(run.run_id, group.group_id, until, deadline,
                               due_at=min(deadline, now + LOOK_SECONDS))  # fmt: skip
    send_poll(services, run.run_id, group.group_id, group.capture_polls)


def poll_delay(poll: int) -> int:
    """Seconds before capture poll number `poll`: 15 s for the first 5 minutes (a capture
    comes within minutes of the job running), then doubling up to the reconciler's 5
    minutes, so that a group waiting long (a job that does not run, in stop mode) costs a
    few polls an hour, not hundreds."""
    if poll < QUICK_POLLS:
        return POLL_SECONDS
    return int(min(LOOK_SECONDS, POLL_SECONDS * 2 ** min(poll - QUICK_POLLS + 1, 10)))


def send_poll(services: Services, run_id: str, group_id: str, poll: int) -> None:
    if not services.capture_queue.configured:
        return  # no queue (a stage without one): the reconciler's looks alone
    check = CaptureCheck(run_id=run_id, group_id=group_id, poll=poll)
    services.capture_queue.send(check.model_dump(mode="json"), poll_delay(poll))


def check(services: Services, request: CaptureCheck) -> None:
    """A capture poll came due: take its number, look at the group, and send the next
    poll while the group still waits."""
    observability.bind_run(request.run_id)
    store, now = services.store, services.now_epoch()
    group = store.get_group(request.run_id, request.group_id)
    if not waits_for_capture(group):
        return  # released, moved on, or not waiting: the chain ends here
    if not store.claim_capture_poll(request.run_id, request.group_id, request.poll,
                                    now + poll_delay(request.poll + 1)):  # fmt: skip
        observability.logger().info("capture poll ignored: taken already", poll=request.poll)
        return
    assert group is not None
    if look(services, group):
        send_poll(services, request.run_id, request.group_id, request.poll + 1)


def look(
    services: Services, group: GroupRecord, members: list[InstanceRecord] | None = None
) -> bool:
    """Release the members of `group` that are captured, and, past the freeze budget, the
    rest; close the phase if none is left; whether the group still waits."""
    store = services.store
    run = store.get_run(group.run_id)
    if run is None:
        raise LookupError(f"run {group.run_id} has a group but no header")
    run_input = RunInput.model_validate_json(run.input_json)
    if members is None:
        members = store.list_instances(group.run_id, group.group_id)
    waiting = awaiting(members)
    captured = observe(services, run, run_input, waiting)
    seen_at = iso(services.clock.now())
    release(services, group, {i: f | {"released_at": seen_at} for i, f in captured.items()},
            CAPTURED)  # fmt: skip
    if group.capture_until is not None and services.now_epoch() >= group.capture_until:
        budget = freeze_budget(run_input)
        reason = (
            f"released before its capture was seen: the freeze budget ({budget} s, "
            "MaxFreezeSeconds) ran out"
        )
        late: dict[str, dict[str, object]] = {
            member.instance_id: {
                "released_at": seen_at,
                "release_reason": reason,
                "consistency": str(Consistency.CRASH),
            }
            for member in waiting
            if member.instance_id not in captured
        }
        released = release(services, group, late, RELEASED_AT_BUDGET)
        # Their jobs' ends relabel what they produce (`results._label_completed`).
        jobs = [m.phase(Phase.BACKUP).backup_job_id or "" for m in waiting
                if m.instance_id in released]  # fmt: skip
        store.flag_jobs(jobs, UNCAPTURED)
    current = store.get_group(group.run_id, group.group_id)
    if current is not None and current.phase == Phase.BACKUP and current.pending <= 0:
        close_phase(services, current)
        return False
    return waits_for_capture(current)


def release(
    services: Services, group: GroupRecord, fields: dict[str, dict[str, object]], count: str
) -> list[str]:
    """Release these members (instance id: what to note); the ones released now."""
    if not fields:
        return []
    released = services.store.release_members(group.run_id, group.group_id, fields, count)
    log = observability.logger()
    for instance_id in released:
        noted = fields[instance_id]
        if count == CAPTURED:
            log.info("released at capture", instance_id=instance_id,
                     captured_at=noted["captured_at"], snapshots=noted["snapshot_ids"])  # fmt: skip
        else:
            log.warning("released at the freeze budget, not captured", instance_id=instance_id,
                        reason=noted["release_reason"])  # fmt: skip
    if released:
        observability.count(f"Instances{count.title()}", len(released))
    return released
