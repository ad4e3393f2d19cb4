"""The guarantees of DESIGN.md section 3 as invariants of one finished schedule.

Each check reads what the emulated AWS saw (`Observed`: the calls in virtual time, the
SSM invocations and their final statuses, the backup jobs, the EC2 state changes) and the
records of every run found in the state table (`run_ids`: runs are found in the table,
not from their Run Started events, so a run that was never announced is checked too).
Each returns the invariants it found broken, as sentences.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.logic.decisions import RUNNING_STATES, run_budget_seconds
from chalicelib.models import state_machine as sm
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import (
    Consistency,
    InstanceRecord,
    InstanceStatus,
    Phase,
    PhaseStatus,
    RunRecord,
    RunStatus,
)
from chalicelib.patterns import RECONCILE_EVERY_MINUTES
from prepost.local.cloud import HANG, LocalCloud
from tests.property.faults import CANCEL, RUN_COMPLETED, Schedule

TERMINAL = {RunStatus.SUCCEEDED, RunStatus.COMPLETED_WITH_ERRORS, RunStatus.FAILED,
            RunStatus.TIMED_OUT, RunStatus.CANCELLED}  # fmt: skip
SCRIPT_PHASES = (Phase.PRE_SCRIPT, Phase.POST_SCRIPT)
_FACT = re.compile(r"(\S+)=(\S+)")
NEVER = datetime.max.replace(tzinfo=UTC)


def run_ids(cloud: LocalCloud) -> list[str]:
    """Every run whose header is in the state table, whichever store holds it."""
    store: Any = cloud.store
    if hasattr(store, "items"):  # the in-memory store: its dicts
        items = store.items()
    else:  # moto's DynamoDB, through a client without the emulation's hooks
        client = cloud.plain_client("dynamodb")
        items = [
            {name: value["S"] for name, value in item.items() if "S" in value}
            for page in client.get_paginator("scan").paginate(TableName=cloud.table_name)
            for item in page["Items"]
        ]
    return sorted(
        item[sm.PARTITION_KEY].removeprefix("RUN#")
        for item in items
        if item[sm.SORT_KEY] == "RUN" and item[sm.PARTITION_KEY].startswith("RUN#")
    )


@dataclass
class Send:
    """A SendCommand that AWS accepted, for one of its instances."""

    command_id: str
    instance_id: str
    run_id: str
    phase: Phase
    final: str  # the invocation's final status (HANG: never ends)
    at: datetime


class Observed:
    """What the emulated AWS saw, in virtual time."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self.calls: dict[str, list[tuple[datetime, dict[str, Any]]]] = defaultdict(list)
        timed = [(t, what[5:]) for t, what in cloud.timeline if what.startswith("call ")]
        untimed = [(f"{s}:{o}", p) for s, o, p in cloud.calls if s != "dynamodb"]
        assert [name for _, name in timed] == [name for name, _ in untimed], "calls unpaired"
        # Calls AWS accepted (`calls` holds the refused ones too).
        self.accepted: dict[str, list[tuple[datetime, dict[str, Any]]]] = defaultdict(list)
        refused = {id(record) for _, _, record, _ in cloud.refused}
        for (at, name), (_, params) in zip(timed, untimed, strict=True):
            self.calls[name].append((at, params))
            if id(params) not in refused:
                self.accepted[name].append((at, params))
        # The first moment each event was made (delivered, lost or late alike).
        self.first: dict[tuple[str, ...], datetime] = {}
        # Where in the timeline a run's cancel was first delivered, and its Run Completed
        # first put (the virtual clock may give both one moment).
        self.position: dict[tuple[str, str], int] = {}
        for n, (at, what) in enumerate(cloud.timeline):
            facts = dict(_FACT.findall(what))
            if RUN_COMPLETED in what and "run_id" in facts:
                self.position.setdefault(("completed", facts["run_id"]), n)
            if what.startswith("event ") and CANCEL in what and "run_id" in facts:
                self.position.setdefault(("cancel", facts["run_id"]), n)
                self.first.setdefault(("cancel", facts["run_id"]), at)
            if "instance-id" in facts and "state" in facts:
                self.first.setdefault(("ec2", facts["instance-id"], facts["state"]), at)
            if "backupJobId" in facts:
                self.first.setdefault(("job", facts["backupJobId"], facts["state"]), at)
        # A cancel whose handler died where it was delivered takes effect at Lambda's retry
        # (a minute later, then two more): what the run did until then is not late.
        failed = {at for at, what in cloud.timeline if what.startswith("error cancel_run:")}
        for key, at in list(self.first.items()):
            if key[0] == "cancel":
                for retry_after in (60, 120):
                    if at not in failed:
                        break
                    at += timedelta(seconds=retry_after)
                self.first[key] = at
        self.sends = self._sends()
        # Indexes of the above by instance: at 2,000 instances a scan per instance is
        # quadratic (tens of seconds of the scale tests).
        self._sends_by: dict[tuple[str, Phase, str], list[Send]] = defaultdict(list)
        for send in self.sends:
            self._sends_by[(send.run_id, send.phase, send.instance_id)].append(send)
        self._naming: dict[tuple[str, bool], dict[str, list[datetime]]] = {}

    def _sends(self) -> list[Send]:
        """Each instance of each SendCommand AWS accepted (refused calls made none)."""
        sends = []
        for (command_id, instance_id), invocation in self.cloud.invocations_ssm.items():
            command = self.cloud.commands[command_id]
            _, run_id, phase = command["Comment"].split(" ")
            never = invocation.expires + timedelta(days=3650)
            final = HANG if invocation.final == HANG and invocation.started else (
                invocation.status(never))  # fmt: skip
            sends.append(
                Send(command_id, instance_id, run_id, Phase(phase), final,
                     command["RequestedDateTime"])
            )  # fmt: skip
        return sends

    def sends_of(self, run_id: str, phase: Phase, instance_id: str) -> list[Send]:
        return list(self._sends_by.get((run_id, phase, instance_id), []))

    def jobs_of(self, run_id: str) -> list[dict[str, Any]]:
        return [job for job in self.cloud.backup.jobs.values()
                if job["RecoveryPointTags"].get("prepost:run-id") == run_id]  # fmt: skip

    def calls_naming(
        self, operation: str, instance_id: str, accepted: bool = False
    ) -> list[datetime]:
        """When calls of `operation` (only those AWS accepted, if `accepted`) named it."""
        if (operation, accepted) not in self._naming:
            index: dict[str, list[datetime]] = defaultdict(list)
            for at, params in (self.accepted if accepted else self.calls)[operation]:
                for named in dict.fromkeys(params.get("InstanceIds", [])):
                    index[named].append(at)
            self._naming[(operation, accepted)] = index
        return list(self._naming[(operation, accepted)].get(instance_id, []))

    def terminated_at(self, instance_id: str) -> datetime | None:
        """When someone outside the run had the instance terminated (its first event)."""
        return self.first.get(("ec2", instance_id, "shutting-down"))


@dataclass
class Run:
    record: RunRecord
    instances: dict[str, InstanceRecord]
    run_input: RunInput


def check(cloud: LocalCloud, schedule: Schedule, ids: list[str]) -> list[str]:
    """Every invariant over every run in the table; the broken ones."""
    found = run_ids(cloud)
    if not found:
        return ["no run in the state table"]
    seen = Observed(cloud)
    runs: dict[str, Run] = {}
    for run_id in found:
        record = cloud.store.get_run(run_id)
        assert record is not None
        run_input = RunInput.model_validate_json(record.input_json)
        instances = {i.instance_id: i for i in cloud.store.list_instances(run_id)}
        runs[run_id] = Run(record, instances, run_input)
    stopped_before = set(ids[: schedule.stopped_before])
    broken: list[str] = []
    for run_id, run in runs.items():
        broken += [f"{run_id}: {b}" for b in nothing_waits_forever(run)]
        broken += [f"{run_id}: {b}" for b in nothing_is_lost(run, seen)]
        broken += [f"{run_id}: {b}" for b in always_thaw(run, seen, cloud)]
        broken += [f"{run_id}: {b}" for b in success_means_success(run, seen, cloud)]
        broken += [f"{run_id}: {b}" for b in consistency_is_labelled(run, seen, stopped_before)]
        broken += [f"{run_id}: {b}" for b in at_least_once_safe(run, seen)]
        broken += [f"{run_id}: {b}" for b in cancel_is_honoured(run, seen, runs)]
        broken += [f"{run_id}: {b}" for b in phases_are_barriers(run, cloud)]
        broken += [f"{run_id}: {b}" for b in released_only_at_capture(run, seen)]
    broken += restore_power_state(runs, seen, cloud, ids, stopped_before)
    broken += one_run_per_instance(runs)
    return broken


# -- 1. Always thaw -----------------------------------------------------------------------------


def always_thaw(run: Run, seen: Observed, cloud: LocalCloud) -> list[str]:
    """A pre-script that SSM accepted is followed by a post-script that SSM accepted,
    unless the instance was terminated or SSM refuses every command to it, reported."""
    if run.run_input.post_script is None:
        return []
    broken = []
    for instance_id, record in run.instances.items():
        frozen = seen.sends_of(run.record.run_id, Phase.PRE_SCRIPT, instance_id)
        if not frozen or seen.sends_of(run.record.run_id, Phase.POST_SCRIPT, instance_id):
            continue
        post = record.phase(Phase.POST_SCRIPT)
        unreachable = instance_id in cloud.behaviour.send_command_errors
        if record.terminated or (unreachable and post.status is PhaseStatus.FAILED and post.reason):
            continue
        broken.append(f"{instance_id}: frozen, never thawed (post-script {post.status})")
    return broken


# -- 2. Restore power state ----------------------------------------------------------------------


def restore_power_state(
    runs: dict[str, Run],
    seen: Observed,
    cloud: LocalCloud,
    ids: list[str],
    stopped_before: set[str],
) -> list[str]:
    broken = []
    states = cloud.states_of(ids)
    for instance_id in ids:
        stops = seen.calls_naming("ec2:StopInstances", instance_id, accepted=True)
        starts = seen.calls_naming("ec2:StartInstances", instance_id, accepted=True)
        stuck = any(r.instances.get(instance_id) and
                    r.instances[instance_id].status is InstanceStatus.STUCK_STOPPED
                    for r in runs.values())  # fmt: skip
        if instance_id in stopped_before:
            if stops or starts:
                broken.append(f"{instance_id}: stopped before the run, but stopped or started")
            continue
        if seen.terminated_at(instance_id) is not None:
            if stuck:  # gone is not stopped: the operator has nothing to start
                broken.append(f"{instance_id}: terminated, but reported STUCK_STOPPED")
            continue
        if states[instance_id] != "running" and not stuck:
            broken.append(f"{instance_id}: left {states[instance_id]}, not reported STUCK_STOPPED")
        if stuck and states[instance_id] == "running":
            broken.append(f"{instance_id}: reported STUCK_STOPPED, but running")
        # A start refused for a while (throttled, no capacity for now) is tried again
        # until its deadline: stuck before it only if EC2 refuses the start for good.
        for run in runs.values():
            record = run.instances.get(instance_id)
            if record is None or record.status is not InstanceStatus.STUCK_STOPPED:
                continue
            reason = record.phase(Phase.START).reason or ""
            final = (instance_id, "StartInstances") in cloud.behaviour.power_errors
            if not final and "timed out" not in reason:
                broken.append(f"{instance_id}: STUCK_STOPPED before its deadline, although "
                              f"EC2 refused its start only for a while ({reason})")  # fmt: skip
        # A start while a stop it asked for is under way (starting an instance that no
        # stop reached, refused until the phase gave up, changes nothing).
        stopped = seen.first.get(("ec2", instance_id, "stopped"), NEVER)
        for at in starts:
            if any(stop < at for stop in stops) and at < stopped:
                broken.append(f"{instance_id}: started at {at} before its stop was confirmed")
    return broken


# -- 3. Success means success --------------------------------------------------------------------


def success_means_success(run: Run, seen: Observed, cloud: LocalCloud) -> list[str]:
    run_id, broken = run.record.run_id, []
    jobs = {job["BackupJobId"]: job for job in seen.jobs_of(run_id)}
    jobs_by_instance: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs.values():
        jobs_by_instance[job["ResourceArn"].rsplit("/", 1)[-1]].append(job)
    for instance_id, record in run.instances.items():
        failures = []
        for phase in SCRIPT_PHASES:
            result = record.phase(phase)
            for send in seen.sends_of(run_id, phase, instance_id):
                if send.final != "Success":
                    failures.append(f"{phase} {send.final}")
                    if result.status is not PhaseStatus.FAILED or not result.reason:
                        broken.append(f"{instance_id}: {phase} ended {send.final}, "
                                      f"recorded {result.status} ({result.reason})")  # fmt: skip
            if result.status is PhaseStatus.SUCCEEDED and not seen.sends_of(
                run_id, phase, instance_id
            ):
                broken.append(f"{instance_id}: {phase} SUCCEEDED, but no command reached it")
        backup = record.phase(Phase.BACKUP)
        for job in jobs_by_instance[instance_id]:
            if job["State"] == "COMPLETED":
                continue
            failures.append(f"BACKUP {job['State']}")
            if backup.status is not PhaseStatus.FAILED or not backup.reason:
                broken.append(f"{instance_id}: backup job {job['State']}, "
                              f"recorded {backup.status} ({backup.reason})")  # fmt: skip
        if backup.status is PhaseStatus.SUCCEEDED:
            job = jobs.get(backup.backup_job_id or "")
            if job is None or job["State"] != "COMPLETED":
                broken.append(f"{instance_id}: BACKUP SUCCEEDED, job {job and job['State']}")
        for phase in (Phase.STOP, Phase.START):
            operation = "StopInstances" if phase is Phase.STOP else "StartInstances"
            refused = (instance_id, operation) in cloud.behaviour.power_errors
            acted = record.phase(phase).started_at is not None  # not another run's call
            if refused and acted and seen.calls_naming(f"ec2:{operation}", instance_id):
                failures.append(f"{phase} refused")
        if failures and record.status is InstanceStatus.SUCCEEDED:
            broken.append(f"{instance_id}: SUCCEEDED, but {', '.join(failures)}")
        if failures and run.record.status is RunStatus.SUCCEEDED:
            broken.append(f"run SUCCEEDED, but {instance_id}: {', '.join(failures)}")
    return broken


# -- 4. At-least-once safe -------------------------------------------------------------------------


def at_least_once_safe(run: Run, seen: Observed) -> list[str]:
    """No second side effect: one backup job per instance, one accepted command per
    instance and script phase."""
    run_id = run.record.run_id
    jobs = Counter(job["ResourceArn"] for job in seen.jobs_of(run_id))
    broken = [f"{n} backup jobs for {arn}" for arn, n in jobs.items() if n > 1]
    commands = Counter((s.instance_id, s.phase) for s in seen.sends if s.run_id == run_id)
    broken += [f"{i}: {n} {phase} commands" for (i, phase), n in commands.items() if n > 1]
    return broken


# -- 5. Nothing waits forever --------------------------------------------------------------------


def nothing_waits_forever(run: Run) -> list[str]:
    record = run.record
    if record.status not in TERMINAL:
        return [f"ended {record.status}, not in a terminal state"]
    budget = timedelta(seconds=run_budget_seconds(run.run_input)
                       + 2 * 60 * RECONCILE_EVERY_MINUTES)  # fmt: skip
    took = _time(record.finished_at) - _time(record.created_at)
    if took > budget:
        return [f"took {took}, past its deadline {budget}"]
    # Nor does a finished run wait for its final record: a few reconciler passes at most
    # after its last phase ended (not its budget's end, hours later).
    ended = [_time(r.ended_at) for i in run.instances.values() for r in i.phases.values()
             if r.ended_at]  # fmt: skip
    late = _time(record.finished_at) - max(ended, default=_time(record.created_at))
    if late > timedelta(seconds=FINAL_RECORD_WITHIN * 60 * RECONCILE_EVERY_MINUTES):
        return [f"finished {late} after its last phase ended"]
    return []


FINAL_RECORD_WITHIN = 4  # reconciler passes


# -- 6. One run per instance at a time -----------------------------------------------------------


def one_run_per_instance(runs: dict[str, Run]) -> list[str]:
    """No two runs acted on one instance at once: the time each run held it, from its
    first side effect on it to the end of its last phase (its part then gives the lease
    back, whether or not the rest of that run is over; never ended: for ever), does not
    overlap another run's."""
    broken = []
    ordered = sorted(runs.values(), key=lambda r: r.record.created_at)
    for n, first in enumerate(ordered):
        for later in ordered[n + 1 :]:
            for instance_id, record in later.instances.items():
                mine = first.instances.get(instance_id)
                if mine is None:
                    continue
                one, other = _held(mine), _held(record)
                if one and other and one[0] < other[1] and other[0] < one[1]:
                    broken.append(f"{instance_id}: held by {first.record.run_id} "
                                  f"and {later.record.run_id} at once")  # fmt: skip
    return broken


def _held(record: InstanceRecord) -> tuple[datetime, datetime] | None:
    """From the first side effect of a run on an instance to the end of its last phase."""
    acted = [_time(r.started_at) for r in record.phases.values()
             if r.started_at and r.status is not PhaseStatus.SKIPPED]  # fmt: skip
    if record.status is InstanceStatus.SKIPPED or not acted:
        return None
    ended = [r.ended_at for r in record.phases.values()]
    return min(acted), NEVER if None in ended else max(_time(e) for e in ended if e)


# -- 7. Nothing is lost --------------------------------------------------------------------------


def nothing_is_lost(run: Run, seen: Observed) -> list[str]:
    record, run_id, broken = run.record, run.record.run_id, []
    if record.input_json in ("", "null") or not record.created_at or not record.finished_at:
        broken.append("header lacks its input or timestamps")
    for instance_id, instance in run.instances.items():
        if instance.status is InstanceStatus.IN_PROGRESS:
            broken.append(f"{instance_id}: no final status")
        for phase, result in instance.phases.items():
            if result.status in (PhaseStatus.PENDING, PhaseStatus.IN_PROGRESS):
                broken.append(f"{instance_id}: {phase} left {result.status}")
            elif not result.ended_at:
                broken.append(f"{instance_id}: {phase} {result.status} without ended_at")
        # An instance terminated mid-phase may keep no command id (the sender died, the
        # termination ended the phase before any report): its record says terminated.
        for phase in () if instance.terminated else SCRIPT_PHASES:
            recorded = instance.phase(phase).command_id
            for send in seen.sends_of(run_id, phase, instance_id):
                if send.command_id != recorded:
                    broken.append(f"{instance_id}: {phase} command {send.command_id} "
                                  f"not on its record ({recorded})")  # fmt: skip
    backups = {i: r.phase(Phase.BACKUP) for i, r in run.instances.items()}
    for job in seen.jobs_of(run_id):
        instance_id = job["ResourceArn"].rsplit("/", 1)[-1]
        backup = backups.get(instance_id)
        if backup is None or backup.backup_job_id != job["BackupJobId"]:
            broken.append(f"{instance_id}: backup job {job['BackupJobId']} not on its record")
        elif job["State"] == "COMPLETED" and backup.recovery_point_arn != job["RecoveryPointArn"]:
            broken.append(f"{instance_id}: recovery point of {job['BackupJobId']} not recorded")
    return broken


# -- 8. Consistency is labelled ------------------------------------------------------------------


def consistency_is_labelled(run: Run, seen: Observed, stopped_before: set[str]) -> list[str]:
    """Every recovery point names its run and what it is; app-consistent only if the
    pre-script ended Success (or, without one, the instance was powered off), and nothing
    thawed or started the instance before its data was captured (its job's AMI made, each
    snapshot initiated; without an AMI, before its job ended): an instance released before
    its capture (the freeze budget) is labelled crash-consistent."""
    run_id, broken = run.record.run_id, []
    for job in seen.jobs_of(run_id):
        instance_id = job["ResourceArn"].rsplit("/", 1)[-1]
        label = job["RecoveryPointTags"].get("prepost:consistency")
        if label not in (Consistency.APP, Consistency.CRASH):
            broken.append(f"{instance_id}: recovery point labelled {label!r}")
            continue
        point = job.get("RecoveryPointArn")
        if point and seen.cloud.backup.images.get(point.rsplit("/", 1)[-1]):
            label = seen.cloud.backup.recovery_point_tags(point).get("prepost:consistency")
        if label != Consistency.APP:
            continue
        record = run.instances.get(instance_id)
        asked = seen.first.get(("job", job["BackupJobId"], "CREATED"), job["CreationDate"])
        ended = job.get("CapturedAt") or seen.first.get(
            ("job", job["BackupJobId"], job["State"]), NEVER
        )
        running = record is not None and record.original_state in RUNNING_STATES
        if run.run_input.pre_script is not None and running:
            frozen = seen.sends_of(run_id, Phase.PRE_SCRIPT, instance_id)
            if not frozen or any(s.final != "Success" for s in frozen):
                broken.append(f"{instance_id}: app-consistent, pre-script did not succeed")
            thawed = [s.at for s in seen.sends_of(run_id, Phase.POST_SCRIPT, instance_id)]
            if job["State"] == "COMPLETED" and any(asked <= at < ended for at in thawed):
                broken.append(f"{instance_id}: app-consistent, but thawed before its capture")
            continue
        stopped = seen.first.get(("ec2", instance_id, "stopped"))
        powered_off = instance_id in stopped_before or (stopped is not None and stopped <= asked)
        if not powered_off:
            broken.append(f"{instance_id}: app-consistent, but neither frozen nor stopped")
        started = seen.calls_naming("ec2:StartInstances", instance_id, accepted=True)
        if job["State"] == "COMPLETED" and any(asked <= at < ended for at in started):
            broken.append(f"{instance_id}: app-consistent, but started before its capture")
    return broken


# -- cancellation --------------------------------------------------------------------------------


def cancel_is_honoured(run: Run, seen: Observed, runs: dict[str, Run]) -> list[str]:
    """A cancel delivered before the run finished ends it CANCELLED, and no forward side
    effect (pre-script, stop, backup job) of the run is made after it. (A stop carries no
    run id: one made while another run held the instance in its STOP phase is that run's.)"""
    run_id = run.record.run_id
    cancelled = seen.first.get(("cancel", run_id))
    if cancelled is None:
        return []
    if run.record.cancelled_at is not None:  # its handler died after writing the flag
        cancelled = min(cancelled, _time(run.record.cancelled_at))
    finished = _time(run.record.finished_at) if run.record.finished_at else NEVER
    completed = seen.position.get(("completed", run_id))
    if cancelled > finished or (completed is not None and
                                completed < seen.position[("cancel", run_id)]):  # fmt: skip
        return []
    broken = []
    if run.record.status is not RunStatus.CANCELLED:
        broken.append(f"cancelled at {cancelled}, ended {run.record.status}")
    members = set(run.instances)
    late = [s.at for s in seen.sends if (s.run_id, s.phase) == (run_id, Phase.PRE_SCRIPT)]

    def other_run_stopping(instance_id: str, at: datetime) -> bool:
        for other in runs.values():
            record = other.instances.get(instance_id)
            stop = record.phase(Phase.STOP) if record and other is not run else None
            if stop and stop.started_at and _time(stop.started_at) <= at:
                return True
        return False

    for at, params in seen.accepted["ec2:StopInstances"]:
        if any(not other_run_stopping(i, at) for i in members & set(params["InstanceIds"])):
            late.append(at)
    late += [at for at, p in seen.accepted["backup:StartBackupJob"]
             if p["RecoveryPointTags"].get("prepost:run-id") == run_id]  # fmt: skip
    if any(at > cancelled for at in late):
        broken.append(f"a forward side effect after the cancel at {cancelled}")
    return broken


# -- Release at capture (DESIGN.md section 2) ----------------------------------------------------


def released_only_at_capture(run: Run, seen: Observed) -> list[str]:
    """No instance is released (started, thawed while its job goes on) before its capture
    unless it is labelled crash-consistent, with the reason: a member noted captured was
    captured by its job's AMI (every snapshot initiated) after the BACKUP phase began for it
    and before its release; and a released run waits for every job before it completes."""
    broken = []
    jobs = {job["BackupJobId"]: job for job in seen.jobs_of(run.record.run_id)}
    for instance_id, record in run.instances.items():
        backup = record.phase(Phase.BACKUP)
        if backup.released_at is None:
            continue
        job = jobs.get(backup.backup_job_id or "")
        captured = job.get("CapturedAt") if job else None
        if backup.captured_at is not None:
            if captured is None:
                broken.append(f"{instance_id}: noted captured, but its job made no whole AMI")
            elif captured.replace(microsecond=0) > _time(backup.released_at):  # kept to the s
                broken.append(f"{instance_id}: released at {backup.released_at}, captured later")
            elif backup.started_at and captured.replace(microsecond=0) < _time(backup.started_at):
                broken.append(f"{instance_id}: captured before its BACKUP began")
        elif not backup.release_reason:
            broken.append(f"{instance_id}: released uncaptured, without its reason")
        elif backup.consistency is not Consistency.CRASH and (
            backup.status is PhaseStatus.SUCCEEDED or backup.consistency is not None
        ):  # a backup that failed after all has no label (no recovery point to label)
            broken.append(f"{instance_id}: released uncaptured, not labelled crash-consistent")
        running = job is not None and job["State"] in ("CREATED", "RUNNING")
        if run.record.finished_at and running and backup.status is PhaseStatus.SUCCEEDED:
            broken.append(f"{instance_id}: counted succeeded while its job still runs")
    return broken


# -- Phases are barriers inside a group (DESIGN.md section 2) ------------------------------------


def phases_are_barriers(run: Run, cloud: LocalCloud) -> list[str]:
    """No member of a coordination group starts a phase before every member of the group
    ended the phase before it (or, in BACKUP, was released at its capture while its job
    went on), whether the group runs whole or as parts."""
    coordination = {
        group.group_id: group.barrier or group.group_id
        for group in cloud.store.list_groups(run.record.run_id)
    }
    members: dict[str, list[InstanceRecord]] = defaultdict(list)
    for instance in run.instances.values():
        if instance.group_id in coordination:
            members[coordination[instance.group_id]].append(instance)
    broken = []
    for group, records in members.items():
        for before, after in zip(run.record.plan, run.record.plan[1:], strict=False):
            ended = [r.phase(before).released_at or r.phase(before).ended_at for r in records]
            if any(end is None for end in ended):
                continue  # not over: `nothing_waits_forever` says so
            started = [r.phase(after).started_at for r in records if r.phase(after).started_at]
            if started and min(started) < max(e for e in ended if e):
                broken.append(
                    f"group {group}: {after} started at {min(started)} before every member "
                    f"ended {before} (last at {max(e for e in ended if e)})"
                )
    return broken


def _time(text: str | None) -> datetime:
    assert text is not None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
