"""A phase's deadline, poll interval and reconciler poll are what its declaration says.

Each test changes one declaration (chalicelib/logic/phase_table.py) and sees the effect on
a whole run in local mode.
"""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib.clock import parse_iso
from chalicelib.dependencies import Services
from chalicelib.logic.phase_declaration import PassMemo
from chalicelib.logic.phase_table import PHASES
from chalicelib.models.state import InstanceRecord, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import HANG, Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import outcome

RECONCILE_SECONDS = 300  # local mode's reconciler runs every five virtual minutes


def declare(monkeypatch: pytest.MonkeyPatch, phase: Phase, **changes: object) -> None:
    monkeypatch.setitem(PHASES, phase, dataclasses.replace(PHASES[phase], **changes))


def seconds_in(instance: InstanceRecord, phase: Phase) -> float:
    result = instance.phase(phase)
    assert result.started_at
    assert result.ended_at
    return (parse_iso(result.ended_at) - parse_iso(result.started_at)).total_seconds()


@pytest.mark.parametrize("budget", [20 * 60, 40 * 60])
def test_a_phase_times_out_at_its_declared_deadline(
    behaviour: Behaviour, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    declare(monkeypatch, Phase.PRE_SCRIPT, budget_seconds=lambda _: budget)
    (hung,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.script_status[(hung, "PRE_SCRIPT")] = HANG
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    assert instances[hung].phase(Phase.PRE_SCRIPT).timed_out
    assert budget <= seconds_in(instances[hung], Phase.PRE_SCRIPT) <= budget + RECONCILE_SECONDS


@pytest.mark.parametrize("poll", [10 * 60, 40 * 60])
def test_the_reconciler_asks_aws_at_the_declared_interval(
    behaviour: Behaviour, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, poll: int
) -> None:
    declare(monkeypatch, Phase.PRE_SCRIPT, poll_seconds=poll)
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.lose_event = lambda event: event["source"] == "aws.ssm"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    # The script ended in 30 s; without its event, it is seen at the first poll.
    waited = seconds_in(instances[instance_id], Phase.PRE_SCRIPT)
    assert poll <= waited <= poll + RECONCILE_SECONDS


def test_the_reconciler_asks_aws_through_the_declared_poll(
    behaviour: Behaviour, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = PHASES[Phase.BACKUP]
    asked: list[tuple[str, Phase]] = []

    def poll(
        services: Services, members: list[InstanceRecord], phase: Phase, memo: PassMemo
    ) -> None:
        asked.extend((member.instance_id, phase) for member in members)
        declared.poll(services, members, phase, memo)

    declare(monkeypatch, Phase.BACKUP, poll=poll)
    ids = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.lose_event = lambda event: event["source"] == "aws.backup"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert {instance_id for instance_id, _ in asked} == set(ids)
    assert {phase for _, phase in asked} == {Phase.BACKUP}
    assert all(instances[i].phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED for i in ids)


def test_a_phase_whose_declared_poll_learns_nothing_times_out(
    behaviour: Behaviour, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare(monkeypatch, Phase.BACKUP, poll=lambda services, members, phase, memo: None)
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.lose_event = lambda event: event["source"] == "aws.backup"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.TIMED_OUT
    assert instances[instance_id].phase(Phase.BACKUP).timed_out


@pytest.mark.parametrize("retried", [False, True])
def test_the_errors_a_phase_retries_are_its_declaration(
    behaviour: Behaviour, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, retried: bool
) -> None:
    code = "UnsupportedOperation"  # failed at once, unless the declaration retries it
    if retried:
        declare(monkeypatch, Phase.STOP, retry_later=frozenset({code}))
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.power_errors[(instance_id, "StopInstances")] = code
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    stop = instances[instance_id].phase(Phase.STOP)
    assert stop.status is PhaseStatus.FAILED
    assert code in (stop.reason or "")
    assert bool(stop.timed_out) is retried  # retried until the deadline, or refused at once
    assert bool(stop.refused) is not retried
    assert bool(stop.last_error) is retried
