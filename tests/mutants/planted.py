"""Planted bugs, as data: each must make the property test fail (`make mutants`).

Each is the file, the exact text it replaces (which must occur exactly once, or the
runner says the mutant no longer applies), the text put in its place, and the bug.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    bug: str


MUTANTS = [
    Mutant(
        "parts-do-not-wait",
        "chalicelib/logic/transitions.py",
        "    if finished is None or barrier is None or not barrier.complete(finished):\n",
        "    if finished is None or barrier is None:\n",
        "the parts of a large group do not wait for each other at the barrier: one part "
        "stops and backs up while another is still running its pre-script",
    ),
    Mutant(
        "ssm-only-failed-fails",
        "chalicelib/logic/decisions.py",
        "return PhaseStatus.SUCCEEDED if status == SSM_SUCCESS else PhaseStatus.FAILED",
        'return PhaseStatus.FAILED if status == "Failed" else PhaseStatus.SUCCEEDED',
        "only Failed counts as an SSM failure (TimedOut, Undeliverable... count as success)",
    ),
    Mutant(
        "partial-expired-backups-succeed",
        "chalicelib/logic/decisions.py",
        "    if state == BACKUP_SUCCESS:\n",
        '    if state in (BACKUP_SUCCESS, "PARTIAL", "EXPIRED"):\n',
        "PARTIAL or EXPIRED backups count as success",
    ),
    Mutant(
        "always-app-consistent",
        "chalicelib/logic/decisions.py",
        "    if run_input.pre_script is not None and instance.original_state in RUNNING_STATES:\n",
        "    return Consistency.APP\n"
        "    if run_input.pre_script is not None and instance.original_state in RUNNING_STATES:\n",
        "every recovery point is labelled app-consistent",
    ),
    Mutant(
        "start-only-confirmed-stops",
        "chalicelib/logic/decisions.py",
        "    if stop.status is not PhaseStatus.SUCCEEDED and not stop.sent and never:\n",
        "    if stop.status is not PhaseStatus.SUCCEEDED:\n",
        "START acts only on instances whose stop was confirmed: one whose stop was sent but "
        "never confirmed (cancelled, timed out, events lost) is left stopped",
    ),
    Mutant(
        "start-instances-stopped-before",
        "chalicelib/logic/decisions.py",
        "    never = stop.started_at is None or stop.refused\n",
        "    never = False\n",
        "START starts every instance, also those stopped before the run",
    ),
    Mutant(
        "no-thaw-after-failed-pre-script",
        "chalicelib/logic/decisions.py",
        "        if pre.status in (PhaseStatus.SKIPPED, PhaseStatus.PENDING):\n",
        "        if pre.status is not PhaseStatus.SUCCEEDED:\n",
        "the thaw is skipped after a failed pre-script",
    ),
    Mutant(
        "backup-token-per-call",
        "chalicelib/logic/decisions.py",
        'return str(uuid.uuid5(_TOKEN_NAMESPACE, f"{run_id}/{instance_id}"))',
        "return str(uuid.uuid4())",
        "StartBackupJob's idempotency token changes per call: a resumed call starts a second job",
    ),
    Mutant(
        "lease-released-too-early",
        "chalicelib/logic/start_run.py",
        "decisions.run_budget_seconds(run_input) + services.settings.lease_margin_seconds",
        "600",
        "a lease expires ten minutes after the start, long before its run ends",
    ),
    Mutant(
        "duplicate-report-counted-twice",
        "chalicelib/models/state_machine.py",
        'when=eq(f"{result}.status", expected),',
        "when=None,",
        "a member's result is recorded whatever its phase's status: a duplicate or late report "
        "counts again and overwrites the result",
    ),
    Mutant(
        "pending-members-not-resumed",
        "chalicelib/logic/phases.py",
        "unmarked = [m for m in members if m.phase(phase).status is PhaseStatus.PENDING]",
        "unmarked: list[InstanceRecord] = []",
        "members a dead handler left PENDING are not resumed (_mark's resumption dropped)",
    ),
    Mutant(
        "recovery-point-not-recorded",
        "chalicelib/logic/results.py",
        "recovery_point_arn=recovery_point_arn, job_state=state,",
        "recovery_point_arn=None, job_state=state,",
        "a completed backup's recovery point ARN is not recorded",
    ),
    # Issue 12's items, one bug each (item 1 is pending-members-not-resumed above).
    Mutant(
        "transient-refusals-final",
        "chalicelib/logic/transient.py",
        "        r.code for r in RULES if rule(side_effect, r.code, phase).verdict "
        "is not Verdict.FAIL\n",
        "        r.code for r in RULES if False\n",
        "every refusal is final: a throttled send, stop or start, or a start refused while the "
        "instance is still stopping, fails the instance instead of being retried",
    ),
    Mutant(
        "cancel-before-run-dropped",
        "chalicelib/logic/cancel.py",
        "    if _not_running_yet(run):\n        run = _keep(services, request)\n",
        "",
        "a cancel that arrives before its run is RUNNING is dropped, not kept",
    ),
    Mutant(
        "cancel-during-backup-keeps-jobs",
        "chalicelib/logic/cancel.py",
        "    if phase is not Phase.BACKUP:\n        return\n",
        "    return\n",
        "a cancel during BACKUP neither stops the running jobs nor fails their members",
    ),
    Mutant(
        "adopt-for-one-instance",
        "chalicelib/logic/side_effects.py",
        "        if member is not None and not member.phase(phase).command_id\n",
        "        if member is not None and not member.phase(phase).command_id\n"
        "        and member.instance_id == command.instance_ids[0]\n",
        "a command whose sender died is recorded on one of its instances only",
    ),
    # (Retired: "a resumed start writes its groups back to REQUESTED and their members to
    # PENDING". Since a group of a run still STARTING enters no phase, see the mutant
    # starting-run-groups-enter-phases, nothing a resumed start could rewrite has moved:
    # the bug can no longer change an outcome, and no test can catch it.)
    Mutant(
        "terminated-reported-stuck",
        "chalicelib/logic/results.py",
        '        record_power_state(services, key, states.get(member.instance_id, "terminated"))',
        '        record_power_state(services, key, states.get(member.instance_id, "stopped"))',
        "an instance EC2 no longer knows is taken for stopped, not terminated",
    ),
    Mutant(
        "cancel-flag-of-run-ignored",
        "chalicelib/logic/phases.py",
        "    cancelled = group.cancelled or run.cancelled\n",
        "    cancelled = group.cancelled\n",
        "a phase reads only its group's cancel flag: a cancel handler that died before "
        "reaching the group lets it go on stopping and backing up",
    ),
    Mutant(
        "starting-run-groups-enter-phases",
        "chalicelib/logic/phases.py",
        "    if run.status is RunStatus.STARTING:\n",
        "    if False:\n",
        "a group of a run still STARTING enters its first phase before a kept cancel is applied",
    ),
    Mutant(
        "command-item-before-its-members",
        "chalicelib/store.py",
        "        self._write(sm.Transaction((*annotations, put)) if annotations else put)\n",
        "        self._write(put)\n"
        "        for annotation in annotations:\n"
        "            self._write(annotation)\n",
        "a command's item is written before (and apart from) its members' notes of it: a "
        "handler dying between leaves members that finish with no command id",
    ),
    Mutant(
        "last-group-close-not-rearmed",
        "chalicelib/logic/finalize.py",
        "before.groups_pending <= 1:",
        "before.groups_pending < 0:",
        "a handler dying while finalizing the last group leaves the run until its budget ends",
    ),
    Mutant(
        "released-when-the-job-runs",
        "chalicelib/logic/capture.py",
        "        if noted is not None:\n",
        '        noted = noted or {"captured_at": iso(services.clock.now()), "snapshot_ids": []}\n'
        "        if noted is not None:\n",
        "a member is taken for captured as soon as its job runs, before its AMI and snapshots "
        "exist: thawed or started before its data is captured, still labelled app-consistent",
    ),
    Mutant(
        "budget-release-keeps-its-label",
        "chalicelib/logic/capture.py",
        '                "consistency": str(Consistency.CRASH),\n',
        "",
        "a member released at the freeze budget, before its capture, keeps its app-consistent "
        "label on the record",
    ),
    Mutant(
        "jobs-not-awaited",
        "chalicelib/logic/finalize.py",
        "    if group is not None and not group.finalized and group.jobs_pending > 0:\n",
        "    if False:\n",
        "a group released at capture is finalized when its phases end, while its backup jobs "
        "still run: the run completes before its backups do",
    ),
]
