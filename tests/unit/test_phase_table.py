"""One declaration per phase (chalicelib/logic/phase_table.py), and the planner reads it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import app
from chalicelib.logic import decisions, phase_table
from chalicelib.logic.phase_declaration import declarations
from chalicelib.logic.phase_table import PHASES
from chalicelib.models.events import DetailType
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import Phase, PhaseStatus
from tests.conftest import seed_input

ROOT = Path(__file__).resolve().parents[2]


def run_input(**changes: Any) -> RunInput:
    return RunInput.model_validate(seed_input() | changes)


def undeclared(table: dict[Phase, Any]) -> list[str]:
    """What is wrong with a phase table: a phase without its declaration, or a declaration
    filed under another phase."""
    missing = [f"{phase}: no declaration" for phase in Phase if phase not in table]
    misfiled = [
        f"{phase}: declares {declared.phase}"
        for phase, declared in table.items()
        if declared.phase is not phase
    ]
    return missing + misfiled


def test_every_phase_has_exactly_one_declaration() -> None:
    assert undeclared(PHASES) == []
    assert list(PHASES) == list(Phase)  # in the order a run goes through them
    assert declarations() is PHASES  # the one table everyone reads


def test_the_declaration_check_can_fail() -> None:
    without_stop = {p: d for p, d in PHASES.items() if p is not Phase.STOP}
    assert undeclared(without_stop) == ["STOP: no declaration"]
    misfiled = PHASES | {Phase.START: PHASES[Phase.STOP]}
    assert undeclared(misfiled) == ["START: declares STOP"]


def requested_by_app() -> dict[str, list[str]]:
    """The phases each function of app.py takes Phase Requested events for."""
    return {
        source.name: source.event_pattern["detail"]["phase"]
        for source in app.app.event_sources
        if getattr(source, "event_pattern", {}).get("detail-type") == [DetailType.PHASE_REQUESTED]
    }


def test_each_declared_handler_is_a_deployed_function_for_exactly_its_phases() -> None:
    declared: dict[str, list[str]] = {}
    for phase, declaration in PHASES.items():
        declared.setdefault(declaration.handler, []).append(str(phase))
    assert requested_by_app() == declared
    functions = json.loads((ROOT / ".chalice" / "config.json").read_text())["lambda_functions"]
    for handler in declared:
        policy = functions[handler]["iam_policy_file"]  # its own role, as deployed
        assert (ROOT / ".chalice" / policy).is_file()


def test_the_plan_and_the_run_budget_are_read_from_the_declarations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = run_input()
    budget = decisions.run_budget_seconds(given)
    backup = PHASES[Phase.BACKUP]
    assert Phase.BACKUP in decisions.plan(given)
    monkeypatch.setitem(PHASES, Phase.BACKUP, dataclasses.replace(backup, in_plan=lambda _: False))
    assert decisions.plan(given) == [Phase.PRE_SCRIPT, Phase.STOP, Phase.START, Phase.POST_SCRIPT]
    without_backup = decisions.run_budget_seconds(given)
    grace = decisions.REQUEST_GRACE_SECONDS
    assert budget - without_backup == backup.budget_seconds(given) + grace + backup.poll_seconds


def test_a_phase_budget_is_its_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    given = run_input()
    stop = PHASES[Phase.STOP]
    before = decisions.run_budget_seconds(given)
    longer = dataclasses.replace(stop, budget_seconds=lambda _: 7777, poll_seconds=99)
    monkeypatch.setitem(PHASES, Phase.STOP, longer)
    assert decisions.phase_budget_seconds(Phase.STOP, given) == 7777
    added = (7777 - stop.budget_seconds(given)) + (99 - stop.poll_seconds)
    assert decisions.run_budget_seconds(given) - before == added


def test_only_forward_phases_are_stopped_by_a_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The member decision's cancellation rule reads the declaration's `forward`."""
    from tests.unit.test_decisions import instance

    member = instance(PRE_SCRIPT=PhaseStatus.SUCCEEDED)
    assert phase_table.decide_member(Phase.STOP, member, False, run_input()).act
    assert not phase_table.decide_member(Phase.STOP, member, False, run_input(), True).act
    assert phase_table.decide_member(Phase.POST_SCRIPT, member, False, run_input(), True).act
    backward = dataclasses.replace(PHASES[Phase.STOP], forward=False)
    monkeypatch.setitem(PHASES, Phase.STOP, backward)
    assert phase_table.decide_member(Phase.STOP, member, False, run_input(), True).act
