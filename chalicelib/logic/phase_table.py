"""One declaration per phase: everything the system knows about a phase is here.

A run moves each group through these phases in `Phase` order, leaving out those its input
does not ask for. The planner (`decisions.plan`, the run's budget), the phase handlers
(`phases.enter_phase`: who acts, the deadline, when the reconciler looks), cancellation,
the reports (`results`) and the reconciler (which asks AWS through `poll`) read them here.
Adding a phase, or a milestone inside one, is a declaration plus its side-effect code.
"""

from __future__ import annotations

from collections.abc import Callable

from chalicelib.logic import decisions, results, side_effects, transient
from chalicelib.logic.decisions import MemberDecision
from chalicelib.logic.phase_declaration import (
    BACKUP_REPORTS,
    EC2_REPORTS,
    SSM_REPORTS,
    PhaseDeclaration,
)
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import InstanceRecord, Phase, PhaseStatus


def arriving_at(state: str) -> Callable[[str], PhaseStatus | None]:
    """A power change ends when the instance reaches `state` (a gone instance fails every
    phase it is in: `results.record_power_state`)."""

    def outcome(reported: str) -> PhaseStatus | None:
        return PhaseStatus.SUCCEEDED if reported == state else None

    return outcome


def _power_budget(run_input: RunInput) -> int:
    return decisions.STOP_START_BUDGET_SECONDS


PHASES: dict[Phase, PhaseDeclaration] = {
    Phase.PRE_SCRIPT: PhaseDeclaration(
        phase=Phase.PRE_SCRIPT,
        handler="run_scripts",
        in_plan=lambda run_input: run_input.pre_script is not None,
        forward=True,
        acts_on=decisions.pre_script_member,
        execute=side_effects.send_scripts,
        reported_by=SSM_REPORTS,
        ends_on=decisions.ssm_outcome,
        retry_later=transient.retry_later(Phase.PRE_SCRIPT),
        poll_seconds=10 * 60,
        budget_seconds=lambda run_input: decisions.script_budget_seconds(run_input.pre_script),
        poll=results.poll_scripts,
    ),
    Phase.STOP: PhaseDeclaration(
        phase=Phase.STOP,
        handler="stop_instances",
        in_plan=lambda run_input: run_input.start_stop_ec2_required,
        forward=True,
        acts_on=decisions.stop_member,
        execute=side_effects.stop_instances,
        reported_by=EC2_REPORTS,
        ends_on=arriving_at("stopped"),
        retry_later=transient.retry_later(Phase.STOP),
        poll_seconds=10 * 60,
        budget_seconds=_power_budget,
        poll=results.poll_power_states,
    ),
    Phase.BACKUP: PhaseDeclaration(
        phase=Phase.BACKUP,
        handler="start_backups",
        in_plan=lambda run_input: True,
        forward=True,
        acts_on=decisions.backup_member,
        execute=side_effects.start_backups,
        reported_by=BACKUP_REPORTS,
        ends_on=decisions.backup_outcome,
        retry_later=transient.retry_later(Phase.BACKUP),
        poll_seconds=30 * 60,
        budget_seconds=decisions.backup_budget_seconds,
        poll=results.poll_backup_jobs,
    ),
    Phase.START: PhaseDeclaration(
        phase=Phase.START,
        handler="start_instances",
        in_plan=lambda run_input: run_input.start_stop_ec2_required,
        forward=False,
        acts_on=decisions.start_member,
        execute=side_effects.start_instances,
        reported_by=EC2_REPORTS,
        ends_on=arriving_at("running"),
        retry_later=transient.retry_later(Phase.START),
        poll_seconds=10 * 60,
        budget_seconds=_power_budget,
        poll=results.poll_power_states,
    ),
    Phase.POST_SCRIPT: PhaseDeclaration(
        phase=Phase.POST_SCRIPT,
        handler="run_scripts",
        in_plan=lambda run_input: run_input.post_script is not None,
        forward=False,
        acts_on=decisions.post_script_member,
        execute=side_effects.send_scripts,
        reported_by=SSM_REPORTS,
        ends_on=decisions.ssm_outcome,
        retry_later=transient.retry_later(Phase.POST_SCRIPT),
        poll_seconds=10 * 60,
        budget_seconds=lambda run_input: decisions.script_budget_seconds(run_input.post_script),
        poll=results.poll_scripts,
    ),
}


def decide_member(
    phase: Phase,
    instance: InstanceRecord,
    aborted: bool,
    run_input: RunInput,
    cancelled: bool = False,
) -> MemberDecision:
    """Whether `phase` acts on one member of a group, or why it skips it."""
    if instance.terminated:
        return MemberDecision(False, "instance was terminated during the run")
    if cancelled and PHASES[phase].forward:
        return MemberDecision(False, "run cancelled")
    return PHASES[phase].acts_on(instance, aborted, run_input)


def requested_phases(handler: str) -> list[str]:
    """The phases whose Phase Requested event `handler` (a function in app.py) takes."""
    return [str(phase) for phase, declared in PHASES.items() if declared.handler == handler]
