"""A large run whose handlers die anywhere: at 2,000 instances (20 parts of 100), every
phase handler is killed after its k-th call of every kind it makes (reads included, not
only side effects), for several k, and every guarantee still holds.

The crash points all live in one run (each fires once), so one run per k covers every
phase handler and call kind. Checked with the property test's invariants: every frozen
instance thawed, every instance in its original power state (or reported), every phase
closed, nothing done twice, the run terminal within its budget.
"""

from __future__ import annotations

import pytest

from prepost.local.cloud import LocalCloud
from tests.property import faults, invariants
from tests.property.faults import Schedule

pytestmark = pytest.mark.slow

FLEET = 2_000
HANDLERS = ["run_scripts", "stop_instances", "start_backups", "start_instances",
            "finalize_group", "script_invocation_changed", "instance_state_changed",
            "backup_job_changed", "reconcile_runs"]  # fmt: skip
CALLS = ["GetItem", "Query", "UpdateItem", "TransactWriteItems", "PutItem", "DeleteItem",
         "BatchWriteItem", "PutEvents", "SendCommand", "ListCommands", "StopInstances",
         "StartInstances", "DescribeInstances", "StartBackupJob", "ListBackupJobs",
         "ListCommandInvocations"]  # fmt: skip


@pytest.mark.parametrize("k", [1, 3, 17])
def test_handlers_killed_after_any_call_leave_every_guarantee(k: int) -> None:
    schedule = Schedule(size=FLEET, groups=1, group_by="run", stopped_before=0,
                        start_stop=True, pre_script=True, post_script=True, abort=False,
                        seed=k)  # fmt: skip
    with LocalCloud(behaviour=None, store="memory", seed=k) as cloud:
        cloud.configure_stage(PREPOST_MAX_INSTANCES_PER_RUN=str(FLEET))
        ids = faults.start(cloud, schedule)
        for handler in HANDLERS:
            for call in CALLS:
                cloud.behaviour.crash_at_call[(handler, call)] = k
        cloud.drain(max_events=2_000_000)
        fired = sum(1 for _, what in cloud.timeline if what.startswith("crash after"))
        cloud.behaviour.crash_at_call.clear()
        broken = invariants.check(cloud, schedule, ids)
    assert broken == []
    # Dozens of handlers died, in every phase.
    assert fired >= 20
