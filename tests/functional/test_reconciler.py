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


def _tick(cloud: LocalCloud) -> None:
    """One invocation of the scheduled reconciler, now (as its Chalice schedule would)."""
    from prepost.samples import load_event

    cloud.invoke("reconcile_runs", load_event("aws-scheduled-event"))


def _started(cloud: LocalCloud, tag: str, **changes: Any) -> str:
    """A run over the instances tagged `tag`, left waiting in its pre-script: its id."""
    detail = seed_input() | {"TargetEC2TagValue": tag} | changes
    cloud.publish(cloud.start_event(detail))
    cloud.drain()
    [run_id] = {
        e["detail"]["run_id"]
        for e in cloud.emitted
        if e["detail-type"].endswith("Run Started") and e["detail"]["run_id"] not in _SEEN
    }
    _SEEN.add(run_id)
    return run_id


_SEEN: set[str] = set()


def test_one_tick_contains_a_corrupt_item_an_orphan_group_and_a_refused_call(
    behaviour: Behaviour, cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    from chalicelib.models.state_machine import group_key, run_key
    from prepost.report import run_report

    _SEEN.clear()
    behaviour.reconcile_every = None  # the test runs each tick itself
    behaviour.lose_event = source("aws.ssm")  # every run waits for the reconciler's poll
    tags = ("corrupt", "orphan", "stale", "healthy")  # the healthy run is due last
    for tag in tags:
        cloud.launch(1, tags={"backup-job": tag})
    corrupt, orphan, stale, healthy = (_started(cloud, tag) for tag in tags)
    # A run whose Run Completed EventBridge keeps refusing: due for its announcement.
    behaviour.refuse_events = {"PrePostBackup Run Completed": 100}
    cloud.publish(cloud.start_event({"not": "an input"}))
    cloud.drain()
    table, dynamodb = cloud.table_name, cloud.session.client("dynamodb")

    def key(item: dict[str, str]) -> dict[str, dict[str, str]]:
        return {name: {"S": value} for name, value in item.items()}

    dynamodb.update_item(  # a group item no model reads any more
        TableName=table, Key=key(group_key(corrupt, "run")),
        UpdateExpression="SET phase_state = :bad",
        ExpressionAttributeValues={":bad": {"S": "NOT_A_STATE"}},
    )  # fmt: skip
    dynamodb.delete_item(TableName=table, Key=key(run_key(orphan)))  # a group without a run
    dynamodb.update_item(  # a stored input that no longer validates (a model changed)
        TableName=table, Key=key(run_key(stale)),
        UpdateExpression="SET input_json = :old",
        ExpressionAttributeValues={":old": {"S": '{"RetiredField": true}'}},
    )  # fmt: skip
    cloud.clock.advance_to(cloud.clock.after(3600))  # everything is due
    due = cloud.store.due_items(int(cloud.clock.now().timestamp()))
    assert len(due) == 5
    assert due[-1] == (healthy, "run")

    _tick(cloud)

    assert cloud.dead_letters == []  # the tick itself did not fail
    assert '"ReconcileErrors":[1.0,1.0,1.0,1.0]' in capsys.readouterr().out
    _, instances = outcome(cloud, healthy)  # the healthy run moved on in that same tick
    [member] = instances.values()
    assert member.phase(Phase.PRE_SCRIPT).status is PhaseStatus.SUCCEEDED

    for _ in range(2):
        cloud.clock.advance_to(cloud.clock.after(600))
        _tick(cloud)
    still_due = set(cloud.store.due_items(2**40))  # run headers stay, as a last resort
    for aside in (corrupt, orphan, stale):  # each group set aside after three failures
        assert (aside, "run") not in still_due
    [refused] = [
        run_id
        for run_id, group_id in still_due
        if not group_id
        and (run := cloud.store.get_run(run_id))
        and run.status is RunStatus.REJECTED
    ]
    refused_run = cloud.store.get_run(refused)  # an AWS refusal is tried for hours
    assert refused_run is not None
    assert (refused_run.reconcile_failures, refused_run.set_aside_reason) == (3, None)
    stale_run = cloud.store.get_run(stale)
    assert stale_run is not None
    report = run_report(
        stale_run, cloud.store.list_instances(stale), cloud.store.list_groups(stale)
    )
    [shown] = report["set_aside"]  # what `prepost status` prints
    assert shown["failures"] == 3
    assert "ValidationError" in shown["reason"]
