"""The in-memory state store is held to the DynamoDB one: same scenarios, same records."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib.models.state import RunRecord, RunStatus
from prepost.local.cloud import HANG, Behaviour, LocalCloud
from tests.conftest import VAULT, seed_input

Scenario = Callable[[LocalCloud, list[str]], None]


def nothing(cloud: LocalCloud, ids: list[str]) -> None:
    pass


def pre_script_fails_abort(cloud: LocalCloud, ids: list[str]) -> None:
    cloud.behaviour.script_status[(ids[0], "PRE_SCRIPT")] = "Failed"


def backup_fails(cloud: LocalCloud, ids: list[str]) -> None:
    cloud.behaviour.backup_state[ids[1]] = "EXPIRED"


def events_lost_and_duplicated(cloud: LocalCloud, ids: list[str]) -> None:
    cloud.behaviour.lose_event = lambda e: e["source"] in ("aws.backup", "aws.ec2")
    cloud.behaviour.copies = lambda e: 3 if e["source"] == "aws.ssm" else 1


def crash_and_hang(cloud: LocalCloud, ids: list[str]) -> None:
    cloud.behaviour.crash_after["StartBackupJob"] = 1
    cloud.behaviour.script_status[(ids[2], "POST_SCRIPT")] = HANG


def start_capacity(cloud: LocalCloud, ids: list[str]) -> None:
    cloud.behaviour.power_errors[(ids[0], "StartInstances")] = "InsufficientInstanceCapacity"


def notified_twice(cloud: LocalCloud, ids: list[str]) -> None:
    cloud.notify_topic("always")
    cloud.behaviour.copies = lambda e: 2 if e["detail-type"].endswith("Run Completed") else 1


SCENARIOS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "success": (nothing, {}),
    "pre-script fails, abort": (pre_script_fails_abort, {"OnPreScriptFailure": "abort"}),
    "backup fails": (backup_fails, {}),
    "events lost and duplicated": (events_lost_and_duplicated, {}),
    "crash and hang": (crash_and_hang, {"GroupBy": "instance"}),
    "start capacity": (start_capacity, {}),
    "notified, event repeated": (notified_twice, {}),
}


def run_scenario(store: str, scenario: Scenario, options: dict[str, Any]) -> list[Any]:
    with LocalCloud(behaviour=Behaviour(), store=store) as cloud:
        cloud.create_vault(VAULT)
        ids = cloud.launch(3, tags={"backup-job": "true"})
        scenario(cloud, ids)
        run_id = cloud.run(seed_input() | options)
        run = cloud.store.get_run(run_id)
        position = {instance_id: n for n, instance_id in enumerate(ids)}
        instances = sorted(
            cloud.store.list_instances(run_id), key=lambda i: position[i.instance_id]
        )
        header = run.model_dump(exclude={"event_id", "input_json"})
        header["counts"] = sorted(header["counts"].items())  # a map has no order
        record = [header] + [i.model_dump(exclude={"arn"}) for i in instances]
        names = {run_id: "RUN", **{instance_id: f"I{n}" for instance_id, n in position.items()}}
        text = repr(record)
        for name, alias in names.items():
            text = text.replace(name, alias)
        # Ids that AWS makes up (commands, jobs, recovery points) differ between runs.
        made_up = r"'(command_id|backup_job_id|recovery_point_arn)': '[^']*'"
        return [re.sub(made_up, r"'\1': ID", text), cloud.clock.elapsed()]


@pytest.mark.parametrize(("scenario", "options"), SCENARIOS.values(), ids=SCENARIOS.keys())
def test_memory_store_gives_the_same_records_as_dynamodb(
    scenario: Scenario, options: dict[str, Any]
) -> None:
    assert run_scenario("memory", scenario, options) == run_scenario("dynamodb", scenario, options)


def notification_claims(store: str) -> list[Any]:
    """What the notification claim of a run answers, step by step, in one store."""
    with LocalCloud(store=store) as cloud:
        answers: list[Any] = [cloud.store.mark_run_notified("no-such-run", "t0")]
        run = RunRecord(run_id="r", status=RunStatus.FAILED, created_at="2026-11-26T02:00:00Z")
        cloud.store.put_run_if_new(run, now_epoch=1_795_658_400)
        answers += [
            cloud.store.mark_run_notified("r", "t1"),
            cloud.store.mark_run_notified("r", "t2"),
        ]
        answers.append(cloud.store.get_run("r").notified_at)
        cloud.store.unmark_run_notified("r", "t2")  # not the claim that holds: nothing changes
        answers.append(cloud.store.get_run("r").notified_at)
        cloud.store.unmark_run_notified("r", "t1")
        answers.append(cloud.store.get_run("r").notified_at)
        answers += [cloud.store.mark_run_notified("r", "t3"), cloud.store.get_run("r").notified_at]
        return answers


def test_the_notification_claim_is_the_same_in_both_stores() -> None:
    expected = [False, True, False, "t1", "t1", None, True, "t3"]
    assert notification_claims("dynamodb") == expected
    assert notification_claims("memory") == expected
