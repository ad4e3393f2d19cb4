"""Lost events and missed deadlines: the reconciler alone brings every run to its end."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.logic.decisions import phase_budget_seconds
from chalicelib.models.run_input import RunInput
from chalicelib.models.state import InstanceStatus, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import HANG, Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome, script_targets, statuses

Event = dict[str, Any]


def source(name: str) -> Callable[[Event], bool]:
    return lambda event: event["source"] == name


def detail_type(suffix: str) -> Callable[[Event], bool]:
    return lambda event: event["detail-type"].endswith(suffix)


LOSSES = {
    "every SSM event": source("aws.ssm"),
    "every EC2 event": source("aws.ec2"),
    "every Backup event": source("aws.backup"),
    "every AWS event": lambda e: e["source"].startswith("aws.") and e["source"] != "aws.events",
    "every Phase Requested": detail_type("Phase Requested"),
    "every Phase Completed": detail_type("Phase Completed"),
}


@pytest.mark.parametrize("lose", LOSSES.values(), ids=LOSSES.keys())
def test_lost_events_the_reconciler_finishes_the_run_with_the_same_result(
    behaviour: Behaviour, cloud: LocalCloud, lose: Callable[[Event], bool]
) -> None:
    ids = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.lose_event = lose
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    for instance_id in ids:
        assert statuses(instances[instance_id]) == dict.fromkeys(Phase, PhaseStatus.SUCCEEDED)
        assert instances[instance_id].phase(Phase.BACKUP).recovery_point_arn
        assert cloud.state_of(instance_id) == "running"
    assert len(calls(cloud, "backup", "StartBackupJob")) == 3
    assert any("tick reconcile_runs" in what for _, what in cloud.timeline)
    assert cloud.store.due_items(2**40) == []  # nothing left for the reconciler


def test_lost_ssm_failure_is_read_with_its_details(behaviour: Behaviour, cloud: LocalCloud) -> None:
    bad, _ = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.lose_event = source("aws.ssm")
    behaviour.script_status[(bad, "PRE_SCRIPT")] = "Delivery Timed Out"
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    reason = instances[bad].phase(Phase.PRE_SCRIPT).reason
    assert reason == "SSM status TimedOut (Delivery Timed Out)"


def test_a_hanging_pre_script_times_out_then_backup_and_thaw_go_on(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    hung, fine = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.script_status[(hung, "PRE_SCRIPT")] = HANG
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    pre = instances[hung].phase(Phase.PRE_SCRIPT)
    assert pre.status is PhaseStatus.FAILED
    assert pre.timed_out
    assert pre.reason == "PRE_SCRIPT timed out: no result by its deadline"
    budget = phase_budget_seconds(Phase.PRE_SCRIPT, RunInput.model_validate(seed_input()))
    assert cloud.clock.elapsed() > timedelta(seconds=budget)
    assert instances[hung].phase(Phase.BACKUP).consistency == "crash-consistent"
    assert hung in script_targets(cloud, Phase.POST_SCRIPT)  # always thaw
    assert instances[fine].status is InstanceStatus.SUCCEEDED
    assert all(cloud.state_of(i) == "running" for i in (hung, fine))


def test_a_backup_that_never_ends_times_out_and_the_run_says_so(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    ids = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state.update(dict.fromkeys(ids, "RUNNING"))  # never terminal
    detail = seed_input()
    detail["BackupDetails"]["CompleteWindowMinutes"] = 180
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.TIMED_OUT
    for instance_id in ids:
        instance = instances[instance_id]
        assert instance.phase(Phase.BACKUP).timed_out
        assert instance.phase(Phase.START).status is PhaseStatus.SUCCEEDED  # power restored
        assert instance.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED  # thawed
        assert cloud.state_of(instance_id) == "running"
    assert cloud.clock.elapsed() < timedelta(hours=4)


@pytest.mark.parametrize("refusals", [1, 3])  # once; and past Lambda's two retries
def test_a_run_completed_event_that_could_not_be_put_is_put_by_the_reconciler(
    behaviour: Behaviour, cloud: LocalCloud, refusals: int
) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    behaviour.refuse_events["PrePostBackup Run Completed"] = refusals
    if refusals > 2:
        cloud.expect_dead_letters = True  # the finalizer's invocation gives up, as it should
    run_id = cloud.run(seed_input())

    run, _ = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.announced_at is not None
    completed = [e["detail"] for e in cloud.emitted
                 if e["detail-type"] == "PrePostBackup Run Completed"]  # fmt: skip
    assert [c["run_id"] for c in completed] == [run_id]  # put once, when it finally could be
    assert completed[0]["status"] == "SUCCEEDED"
    assert completed[0]["counts"] == {"SUCCEEDED": 2}
    assert cloud.store.due_items(int(cloud.clock.after(10**9).timestamp())) == []
