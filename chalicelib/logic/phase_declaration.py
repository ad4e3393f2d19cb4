"""What the system needs to know about a phase, as one value: a `PhaseDeclaration`.

The declarations themselves, one per `Phase`, are in `phase_table.py`. The planner, the
phase handlers, cancellation, the reports and the reconciler all read them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.models.run_input import RunInput
from chalicelib.models.state import InstanceRecord, Phase, PhaseStatus

if TYPE_CHECKING:
    from chalicelib.dependencies import Services
    from chalicelib.logic.decisions import MemberDecision
    from chalicelib.logic.side_effects import PhaseContext

# The AWS event sources whose reports end a phase.
SSM_REPORTS, EC2_REPORTS, BACKUP_REPORTS = "aws.ssm", "aws.ec2", "aws.backup"

# Given one member, whether the group's aborted flag is set, and the run input: whether the
# phase acts on the member, or why it skips it.
MemberRule = Callable[[InstanceRecord, bool, RunInput], "MemberDecision"]
# The side effect, for the members to act on (on entry, or when resumed).
Executor = Callable[["PhaseContext", list[InstanceRecord]], None]
# What one reconciler pass has asked AWS already, shared by its polls (a listing of a
# run's backup jobs serves every part of the run).
PassMemo = dict[tuple[str, str], Any]
# Ask AWS about members whose reports did not come (in as few calls as AWS allows), and
# record each answer the way its event would have been recorded.
Poll = Callable[["Services", list[InstanceRecord], Phase, PassMemo], None]


@dataclass(frozen=True)
class PhaseDeclaration:
    """One phase: whether a run has it, whom it acts on, what it does, what ends it, how
    long it may take and how the reconciler looks after it."""

    phase: Phase
    handler: str  # the function in app.py (and its Lambda, role and policy) that acts
    in_plan: Callable[[RunInput], bool]  # whether a run with this input has the phase
    forward: bool  # a cancelled run does not start it; backward phases (compensation) go on
    acts_on: MemberRule
    execute: Executor
    reported_by: str  # the AWS event source whose reports end it
    ends_on: Callable[[str], PhaseStatus | None]  # a reported status -> its outcome, or None
    retry_later: frozenset[str]  # codes tried again later, not failed at once: transient.py
    poll_seconds: int  # how often the reconciler asks AWS about members not reported yet
    budget_seconds: Callable[[RunInput], int]  # how long it may take: its deadline
    poll: Poll


def declarations() -> Mapping[Phase, PhaseDeclaration]:
    """Every phase's declaration."""
    # Imported when first asked for: the table names the side effects and the reports,
    # whose code is built on the modules (decisions, results) that read it.
    from chalicelib.logic.phase_table import PHASES

    return PHASES


def declared(phase: Phase) -> PhaseDeclaration:
    """The declaration of `phase`."""
    return declarations()[phase]
