"""The side effects of the phases: what each one asks AWS to do for the members it acts on.

Each executor takes a `PhaseContext` (the run, its input, the group, the phase's
declaration, whether this is a resumption) and the members to act on; see `phases.py` for
how they are called and resumed safely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chalicelib import observability
from chalicelib.clock import parse_iso
from chalicelib.dependencies import Services
from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import chunks
from chalicelib.gateways.ec2 import INSTANCE_TAG, RUN_TAG
from chalicelib.gateways.ssm import MAX_INSTANCES_PER_COMMAND, SentCommand
from chalicelib.logic import capture, decisions, pacing, policy, transient
from chalicelib.logic.phase_declaration import PhaseDeclaration
from chalicelib.logic.transitions import finish, leased_instance
from chalicelib.models.run_input import RunInput
from chalicelib.models.script_command import CommandRejectedError, RemoteScript
from chalicelib.models.state import (
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseStatus,
    RunRecord,
    StartedJob,
)


@dataclass(frozen=True)
class PhaseContext:
    """What a side effect needs to know: one group of one run, in one declared phase."""

    services: Services
    run: RunRecord
    run_input: RunInput
    group: GroupRecord
    declaration: PhaseDeclaration
    resuming: bool  # members may have had their side effect from a handler that died
    # Seconds until each member refused for now is due its next try (`refused`).
    retry_after: list[int] = field(default_factory=list)
    # What is noted on the members refused for now, written together by `settle`.
    refusals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def phase(self) -> Phase:
        return self.declaration.phase

    def fail(self, instance_id: str, error: Exception) -> None:
        """AWS refused the side effect outright: the member fails the phase."""
        finish(
            self.services, self.group.run_id, self.group.group_id, instance_id, self.phase,
            PhaseStatus.FAILED, reason=str(error), refused=True,
        )  # fmt: skip

    def mark_sent(self, instance_ids: list[str]) -> None:
        self.services.store.annotate_phases(
            self.group.run_id, self.group.group_id, self.phase,
            {instance_id: {"sent": True} for instance_id in instance_ids},
        )  # fmt: skip

    def refused(self, member: InstanceRecord, error: GatewayError) -> None:
        """AWS refused the side effect: fail the member if the refusal is final
        (`transient.py`); otherwise note the error and the attempt, for the reconciler to
        try again with backoff (asking EC2 the state first if the table says so), until
        the phase deadline."""
        if error.code not in self.declaration.retry_later:
            self.fail(member.instance_id, error)
            return
        retries = (member.phase(self.phase).retries or 0) + 1
        self.refusals[member.instance_id] = {
            "last_error": str(error), "last_error_code": error.code, "retries": retries,
        }  # fmt: skip
        self.retry_after.append(transient.backoff_seconds(retries))
        observability.logger().warning(
            "side effect refused for now; will retry", instance_id=member.instance_id,
            phase=self.phase, error=error.code, retries=retries,
        )  # fmt: skip
        observability.count(f"{self.phase}_RETRIED")

    def settle(self) -> None:
        """After the side effects: note the refusals on their members (together), and
        have the reconciler look again when the soonest refused member is due a retry
        (never past the deadline), rather than at the phase's next poll."""
        if not self.retry_after:
            return
        self.services.store.annotate_phases(
            self.group.run_id, self.group.group_id, self.phase, self.refusals
        )
        now = self.services.now_epoch()
        due = now + min(self.retry_after)
        if self.group.deadline is not None:
            due = min(due, self.group.deadline)
        self.services.store.rearm(self.group.run_id, self.group.group_id, self.phase, due)


# -- scripts (PRE_SCRIPT, POST_SCRIPT) ---------------------------------------------------------


def send_scripts(context: PhaseContext, members: list[InstanceRecord]) -> None:
    """AWS-RunRemoteScript by explicit instance ids, 50 per command."""
    services, run, phase = context.services, context.run, context.phase
    script = (
        context.run_input.pre_script if phase is Phase.PRE_SCRIPT else context.run_input.post_script
    )
    if script is None:
        raise ValueError(f"{phase} is in the plan but the input has no script for it")
    prefix = decisions.script_output_prefix(script.output_s3_key_prefix, run.run_id, phase)
    comment = script_comment(run.run_id, phase)
    unsent, adopted = [], set[str]()
    for member in members:
        if member.instance_id in adopted:
            continue
        started = member.phase(phase).started_at
        if context.resuming and started:  # a script sent by a handler that died is adopted
            found = services.ssm.find_command(member.instance_id, comment, parse_iso(started))
            if found:
                _adopt(services, context.group, phase, found)
                adopted.update(found.instance_ids)  # one look-up per command, not per member
                continue
        unsent.append(member)
    try:
        remote = policy.remote_script(script, services.settings, prefix)
    except CommandRejectedError as exc:
        # Allowed when the run started; the deployment's configuration changed since.
        for member in unsent:
            context.fail(member.instance_id, exc)
        return
    for batch in chunks(unsent, MAX_INSTANCES_PER_COMMAND):
        ids = [member.instance_id for member in batch]
        try:
            command_id = services.ssm.send_script(ids, remote, comment)
        except GatewayError as exc:
            if len(batch) > 1 and transient.names_an_instance(
                transient.SEND_COMMAND, exc.code, phase
            ):
                _send_one_by_one(context, batch, remote, comment)
            else:  # throttled, unavailable, a bad document: the same for every member
                for member in batch:
                    context.refused(member, exc)
            continue
        _record_command(services, run.run_id, context.group, phase, command_id, ids)
    context.settle()


def _send_one_by_one(
    context: PhaseContext, batch: list[InstanceRecord], remote: RemoteScript, comment: str
) -> None:
    """One bad instance fails the whole command: send one by one so that it fails alone.
    Once a single send is refused for the call's sake (throttled), the rest are not tried."""
    services, phase = context.services, context.phase
    for position, member in enumerate(batch):
        try:
            single = services.ssm.send_script([member.instance_id], remote, comment)
        except GatewayError as exc:
            if transient.names_an_instance(transient.SEND_COMMAND, exc.code, phase):
                context.refused(member, exc)
                continue
            for rest in batch[position:]:
                context.refused(rest, exc)
            return
        _record_command(
            services, context.run.run_id, context.group, phase, single, [member.instance_id]
        )


def script_comment(run_id: str, phase: Phase) -> str:
    """The comment of this run's script commands: how a lost command id is found again."""
    return f"prepost-backup {run_id} {phase}"


def adopt_command(
    services: Services, command_id: str, instance_id: str
) -> tuple[str, str, Phase] | None:
    """A report names a command whose id was never recorded (its sender died): if it is
    the script this instance's run is waiting for, record it now on every member it was
    sent to; (run, group, phase)."""
    instance = leased_instance(services, instance_id)
    if instance is None:
        return None
    for phase in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT):
        result = instance.phases.get(phase)
        if result is None or result.status is not PhaseStatus.IN_PROGRESS or result.command_id:
            continue
        command = services.ssm.command(command_id)
        if command is not None and command.comment == script_comment(instance.run_id, phase)[:100]:
            group = services.store.get_group(instance.run_id, instance.group_id)
            if group is not None:
                _adopt(services, group, phase, command)
                return instance.run_id, instance.group_id, phase
    return None


def adopt_unrecorded(services: Services, group: GroupRecord, phase: Phase) -> None:
    """Before a script phase's members are ended otherwise (the run cancelled): a command
    that a sender which died made is recorded on the members it reached, as the resumed
    sender would; their reports may come after the run has let go of them."""
    comment = script_comment(group.run_id, phase)
    adopted: set[str] = set()
    for member in services.store.list_instances(group.run_id, group.group_id):
        result = member.phase(phase)
        unrecorded = result.status is PhaseStatus.IN_PROGRESS and not result.command_id
        if member.instance_id in adopted or not unrecorded or not result.started_at:
            continue
        found = services.ssm.find_command(member.instance_id, comment, parse_iso(result.started_at))
        if found:
            _adopt(services, group, phase, found)
            adopted.update(found.instance_ids)


def _adopt(services: Services, group: GroupRecord, phase: Phase, command: SentCommand) -> None:
    """Record a command whose sender died on every member it was sent to, not only on the
    one that found it: the others' reports then find it recorded, and their records hold it
    (a member that holds another command id keeps it). Read item by item (at most 50), so
    that a report's handler needs no Query."""
    members = [
        services.store.get_instance(group.run_id, group.group_id, instance_id)
        for instance_id in command.instance_ids
    ]
    reached = [
        member.instance_id
        for member in members
        if member is not None and not member.phase(phase).command_id
    ]
    _record_command(services, group.run_id, group, phase, command.command_id, reached)


def _record_command(
    services: Services,
    run_id: str,
    group: GroupRecord,
    phase: Phase,
    command_id: str,
    instance_ids: list[str],
) -> None:
    # One transaction: a report that finds the command item takes every member's record
    # to hold the command id; a handler that dies before leaves the command to adopt.
    services.store.record_command(
        command_id, run_id, group.group_id, phase, instance_ids, services.now_epoch()
    )
    observability.logger().info(
        "script sent", phase=phase, command_id=command_id, instances=len(instance_ids)
    )


# -- power (STOP, START) -------------------------------------------------------------------------


def stop_instances(context: PhaseContext, members: list[InstanceRecord]) -> None:
    _change_power(context, members, context.services.ec2.stop)


def start_instances(context: PhaseContext, members: list[InstanceRecord]) -> None:
    _change_power(context, members, context.services.ec2.start)


PowerCall = Callable[[list[str], Callable[[str], bool]], dict[str, str | GatewayError]]


def _change_power(context: PhaseContext, members: list[InstanceRecord], call: PowerCall) -> None:
    """Stop or start; an instance already in a state that ends the phase finishes at once
    (no event will come for it), the others finish on their state-change event."""
    by_id = {member.instance_id: member for member in members}
    side_effect = transient.SIDE_EFFECT_OF[context.phase]
    outcome = call(list(by_id), lambda code: transient.names_an_instance(side_effect, code))
    arrived = {id: state for id, state in outcome.items() if not isinstance(state, GatewayError)}
    context.mark_sent(list(arrived))
    for instance_id, state in outcome.items():
        if isinstance(state, GatewayError):
            context.refused(by_id[instance_id], state)
    for instance_id, state in arrived.items():
        ended = context.declaration.ends_on(str(state))
        if ended is not None:
            finish(
                context.services, context.group.run_id, context.group.group_id, instance_id,
                context.phase, ended,
            )  # fmt: skip
    context.settle()


# -- backup ---------------------------------------------------------------------------------------


def start_backups(context: PhaseContext, members: list[InstanceRecord]) -> None:
    """StartBackupJob, one per instance, labelled with what the backup really is; the jobs
    are recorded a transaction at a time (a handler that dies before finds them again
    by their idempotency tokens)."""
    services, run, run_input = context.services, context.run, context.run_input
    details = run_input.backup_details
    window = timedelta(minutes=details.start_window_minutes)
    started: list[StartedJob] = []
    # The parts released together share the account's StartBackupJob rate (`pacing.py`).
    pacer = pacing.Pacer(services.clock, context.group.calls_per_second)
    releasing = capture.at_capture(run_input, run.plan)
    # Released at capture: the volumes its snapshots must cover, as attached now (frozen
    # or stopped); an instance no longer described has none, and is never released early.
    volumes = services.ec2.volumes([m.instance_id for m in members]) if releasing else {}
    windows_vss = details.backup_options.get("WindowsVSS") == "enabled"
    for member in members:
        begun = member.phase(Phase.BACKUP).started_at
        if context.resuming and begun and services.clock.now() > parse_iso(begun) + window:
            last_error = member.phase(Phase.BACKUP).last_error
            reason = "no backup job could be started within the start window" + (
                f" (last error: {last_error})" if last_error else ""
            )
            context.fail(member.instance_id, RuntimeError(reason))
            continue
        label = decisions.consistency(member, run_input)
        tags = details.recovery_point_tags | {
            RUN_TAG: run.run_id,
            INSTANCE_TAG: member.instance_id,
            "prepost:consistency": str(label),
        }
        pacer.wait()
        try:
            # The token makes a repeated call (a resumption) return the same job.
            job_id = services.backup.start_backup_job(
                member.arn or "",
                details,
                decisions.idempotency_token(run.run_id, member.instance_id),
                tags,
            )
        except GatewayError as exc:
            context.refused(member, exc)
            continue
        observability.logger().info(
            "backup job started", instance_id=member.instance_id, backup_job_id=job_id,
            consistency=label,
        )  # fmt: skip
        noted: dict[str, Any] = {"sent": True, "consistency": str(label)}
        if releasing:
            noted["volumes"] = volumes.get(member.instance_id, [])
        if windows_vss:
            noted["windows_vss"] = True
        started.append(StartedJob(member.instance_id, job_id, noted))
        if len(started) == JOBS_PER_RECORD:
            _record_jobs(context, started)
            started = []
    _record_jobs(context, started)
    context.settle()
    if releasing:
        capture.arm(services, run, run_input, context.group)


# Started jobs are recorded this many at a time: few writes, and a job's report seldom
# comes before its record (it is retried if it does); a handler that dies loses at most
# this many records, which its resumption finds again by their tokens.
JOBS_PER_RECORD = 25


def _record_jobs(context: PhaseContext, started: list[StartedJob]) -> None:
    if started:
        services = context.services
        services.store.record_jobs(
            context.run.run_id, context.group.group_id, started, services.now_epoch()
        )
