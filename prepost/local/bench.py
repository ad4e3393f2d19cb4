"""`make bench`: what a run costs, per instance, at 10, 100 and 1,000 instances.

Measured on the local cloud (moto's DynamoDB, so the DynamoDB numbers are real API
calls), beside a model of the AWS sample this product replaces: a Step Functions state
machine that polls in Wait loops (1 s between script polls, 10 s between instance-state
and backup polls), where every poll is a Lambda invocation, a Describe call and Step
Functions state transitions (Wait, Task, Choice). The sample's template is not in this
repository, so its numbers are a model of that design, not a measurement.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from prepost.local.cloud import ACCOUNT, LocalCloud
from prepost.local.scenario import Scenario
from prepost.report import seconds_between

DYNAMODB_READS = {"GetItem", "Query", "Scan", "BatchGetItem"}
DYNAMODB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
SEED_POLL_SECONDS = {"PRE_SCRIPT": 1, "STOP": 10, "BACKUP": 10, "START": 10, "POST_SCRIPT": 1}
SEED_TRANSITIONS_PER_POLL = 3  # Wait, Task (the Describe in a Lambda), Choice


@dataclass
class Measure:
    instances: int
    wall_seconds: float
    virtual_seconds: int
    status: str
    invocations_per_instance: float
    calls_per_instance: dict[str, float]
    dynamodb_reads_per_instance: float
    dynamodb_writes_per_instance: float
    largest_item_bytes: int
    seed_model: dict[str, float]


def measure(instances: int, scenario_name: str = "seed-example") -> Measure:
    scenario = Scenario.load(scenario_name)
    scenario = scenario.model_copy(
        update={"fleet": scenario.fleet.model_copy(update={"count": instances})}
    )
    with LocalCloud(behaviour=scenario.behaviour()) as cloud:
        from prepost.local.simulate import _quiet

        with _quiet():
            scenario.prepare(cloud)
            cloud.calls.clear()
            started = time.perf_counter()
            run_id = cloud.run(scenario.run_input())
            wall = time.perf_counter() - started
        run = cloud.store.get_run(run_id)
        if run is None:
            raise LookupError(f"the bench's run {run_id} left no record")
        calls = Counter(f"{service}:{operation}" for service, operation, _ in cloud.calls)
        writes = sum(_items_written(op, p) for s, op, p in cloud.calls if s == "dynamodb"
                     and op in DYNAMODB_WRITES)  # fmt: skip
        reads = sum(n for call, n in calls.items() if call.split(":")[1] in DYNAMODB_READS)
        durations = {
            "PRE_SCRIPT": cloud.behaviour.script_seconds,
            "STOP": cloud.behaviour.stop_seconds,
            "BACKUP": cloud.behaviour.backup_seconds,
            "START": cloud.behaviour.start_seconds,
            "POST_SCRIPT": cloud.behaviour.script_seconds,
        }
        plan = [str(p) for p in run.plan]
        return Measure(
            instances=instances,
            wall_seconds=wall,
            virtual_seconds=seconds_between(run.created_at, run.finished_at),
            status=str(run.status),
            invocations_per_instance=sum(cloud.invocations.values()) / instances,
            calls_per_instance={k: v / instances for k, v in sorted(calls.items())},
            dynamodb_reads_per_instance=reads / instances,
            dynamodb_writes_per_instance=writes / instances,
            largest_item_bytes=_largest_item(cloud),
            seed_model=seed_model({p: durations[p] for p in plan}),
        )


def seed_model(durations: dict[str, float]) -> dict[str, float]:
    """Per instance, what the polling design spends waiting for the same durations."""
    polls = sum(math.ceil(seconds / SEED_POLL_SECONDS[p]) for p, seconds in durations.items())
    return {
        "lambda_invocations": polls,
        "describe_calls": polls,
        "state_transitions": polls * SEED_TRANSITIONS_PER_POLL,
    }


def _items_written(operation: str, params: dict[str, Any]) -> int:
    if operation == "BatchWriteItem":
        return sum(len(v) for v in params["RequestItems"].values())
    if operation == "TransactWriteItems":
        return len(params["TransactItems"])
    return 1


def _largest_item(cloud: LocalCloud) -> int:
    """The largest item of the state table, by DynamoDB's own item-size rule (moto's)."""
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends[ACCOUNT][cloud.region].get_table(cloud.table_name)
    return max((item.size() for item in table.all_items()), default=0)
