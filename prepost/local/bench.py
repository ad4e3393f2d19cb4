"""`make bench`: what a run costs, per instance, at 10, 100 and 1,000 instances.

Measured on the local cloud (moto's DynamoDB, so the DynamoDB numbers are real API
calls), beside a model of the AWS sample this product replaces: a Step Functions state
machine that polls in Wait loops (1 s between script polls, 10 s between instance-state
and backup polls), where every poll is a Lambda invocation, a Describe call and Step
Functions state transitions (Wait, Task, Choice). The sample's template is not in this
repository, so its numbers are a model of that design, not a measurement.

Beside the per-instance costs, the bench keeps the books of `prepost.local.ledger`: the
most AWS calls and the longest estimated duration of any one handler invocation, and the
most writes to any one item of the state table in one phase (what bounded handlers and
no hot item promise). Lambda invocations count every scheduled invocation AWS would make
during the run (the reconciler's and the profile scheduler's ticks), even those local
mode skips because nothing is due.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chalicelib.models.state import InstanceRecord
from chalicelib.patterns import RECONCILE_EVERY_MINUTES, SCHEDULER_EVERY_MINUTES
from prepost.local.cloud import ACCOUNT, LocalCloud
from prepost.local.ledger import Ledger
from prepost.local.scenario import Scenario
from prepost.report import seconds_between, windows

DYNAMODB_READS = {"GetItem", "Query", "Scan", "BatchGetItem"}
DYNAMODB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
SEED_POLL_SECONDS = {"PRE_SCRIPT": 1, "STOP": 10, "BACKUP": 10, "START": 10, "POST_SCRIPT": 1}
SEED_TRANSITIONS_PER_POLL = 3  # Wait, Task (the Describe in a Lambda), Choice
SCHEDULED = {
    "reconcile_runs": RECONCILE_EVERY_MINUTES,
    "start_scheduled_runs": SCHEDULER_EVERY_MINUTES,
}


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
    aws_calls_per_instance: float = 0.0
    capacity_units_per_instance: dict[str, float] = field(default_factory=dict)
    max_aws_calls_per_invocation: int = 0
    busiest_handler: str = ""
    longest_invocation_seconds: float = 0.0
    longest_handler: str = ""
    max_writes_per_item_per_phase: int = 0
    hottest_item: str = ""
    # How long the instances were held (frozen, stopped): median and maximum, seconds.
    windows: dict[str, dict[str, int]] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The figures as `prepost bench --output json` prints them."""
        return {
            "instances": self.instances,
            "status": self.status,
            "wall_seconds": round(self.wall_seconds, 1),
            "virtual_seconds": self.virtual_seconds,
            "lambda_invocations_per_instance": round(self.invocations_per_instance, 3),
            "aws_calls_per_instance": round(self.aws_calls_per_instance, 3),
            "aws_calls_per_instance_by_operation": {
                k: round(v, 3) for k, v in self.calls_per_instance.items()
            },
            "dynamodb_reads_per_instance": round(self.dynamodb_reads_per_instance, 3),
            "dynamodb_writes_per_instance": round(self.dynamodb_writes_per_instance, 3),
            "dynamodb_capacity_units_per_instance": {
                k: round(v, 3) for k, v in self.capacity_units_per_instance.items()
            },
            "max_aws_calls_per_invocation": self.max_aws_calls_per_invocation,
            "max_aws_calls_handler": self.busiest_handler,
            "longest_invocation_seconds_estimated": round(self.longest_invocation_seconds, 1),
            "longest_invocation_handler": self.longest_handler,
            "max_writes_per_item_per_phase": self.max_writes_per_item_per_phase,
            "hottest_item": self.hottest_item,
            "largest_item_bytes": self.largest_item_bytes,
            "held_seconds": self.windows,
            "seed_model_held_seconds": {
                held: self.seed_model[f"{held}_seconds"] for held in self.windows
            },
        }


def measure(instances: int, scenario_name: str = "seed-example") -> Measure:
    scenario = Scenario.load(scenario_name)
    scenario = scenario.model_copy(
        update={"fleet": scenario.fleet.model_copy(update={"count": instances})}
    )
    with LocalCloud(behaviour=scenario.behaviour()) as cloud:
        from prepost.local.simulate import _quiet

        with _quiet():
            scenario.prepare(cloud)
            # The bench measures any size: the stage's limit is what an operator raises.
            limit = str(max(instances, 1000))
            cloud.configure_stage(PREPOST_MAX_INSTANCES_PER_RUN=limit)
            cloud.calls.clear()
            cloud.ledger = ledger = Ledger()
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
        virtual = seconds_between(run.created_at, run.finished_at)
        most_calls, busiest = ledger.max_calls_per_invocation()
        longest, slowest = ledger.longest_invocation()
        hottest_writes, hottest = ledger.max_writes_per_item_per_phase()
        held = held_windows(cloud.store.list_instances(run_id))
        return Measure(
            instances=instances,
            wall_seconds=wall,
            virtual_seconds=virtual,
            status=str(run.status),
            invocations_per_instance=_invocations(cloud.invocations, virtual) / instances,
            calls_per_instance={k: v / instances for k, v in sorted(calls.items())},
            dynamodb_reads_per_instance=reads / instances,
            dynamodb_writes_per_instance=writes / instances,
            largest_item_bytes=_largest_item(cloud),
            seed_model=seed_model({p: durations[p] for p in plan}),
            aws_calls_per_instance=sum(calls.values()) / instances,
            capacity_units_per_instance={k: v / instances for k, v in ledger.capacity.items()},
            max_aws_calls_per_invocation=most_calls,
            busiest_handler=busiest,
            longest_invocation_seconds=longest,
            longest_handler=slowest,
            max_writes_per_item_per_phase=hottest_writes,
            hottest_item=hottest,
            windows=held,
        )


def held_windows(instances: list[InstanceRecord]) -> dict[str, dict[str, int]]:
    """The median and the longest of the instances' frozen and stopped windows (those the
    run had: `report.windows`)."""
    found: dict[str, dict[str, int]] = {}
    for held in ("frozen", "stopped"):
        spans = sorted(
            span for i in instances if (span := windows(i)[f"{held}_seconds"]) is not None
        )
        if spans:
            found[held] = {"median": spans[len(spans) // 2], "max": spans[-1]}
    return found


def _invocations(invoked: Counter[str], virtual_seconds: int) -> int:
    """Every invocation AWS would make: those of events, and every tick of the scheduled
    functions during the run (local mode skips a tick when nothing is due)."""
    from_events = sum(n for handler, n in invoked.items() if handler not in SCHEDULED)
    ticks = sum(math.ceil(virtual_seconds / (60 * every)) for every in SCHEDULED.values())
    return from_events + ticks


def seed_model(durations: dict[str, float]) -> dict[str, float]:
    """Per instance, what the polling design spends waiting for the same durations; it
    holds an instance frozen (or stopped) until its backup job completes: the windows are
    the job's duration."""
    polls = sum(math.ceil(seconds / SEED_POLL_SECONDS[p]) for p, seconds in durations.items())
    return {
        "lambda_invocations": polls,
        "describe_calls": polls,
        "state_transitions": polls * SEED_TRANSITIONS_PER_POLL,
        "frozen_seconds": durations.get("BACKUP", 0),
        "stopped_seconds": durations.get("BACKUP", 0),
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
