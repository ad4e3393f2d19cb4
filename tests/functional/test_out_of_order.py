"""Out-of-order delivery: any order gives the same final records and side effects."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import VAULT, seed_input

TIMESTAMP = re.compile(
    r"'(started_at|ended_at|finished_at|created_at|captured_at|released_at)': '[^']*'"
)
MADE_UP = re.compile(r"'(command_id|backup_job_id|recovery_point_arn)': '[^']*'")
MADE_UP_LISTS = re.compile(r"'(volumes|snapshot_ids)': \[[^\]]*\]")


def outcome(delays: dict[str, int] | None, seed: int) -> tuple[str, list[tuple[str, int]]]:
    """The normalized records and side-effect counts of one run of a fixed scenario."""

    def late(event: dict[str, Any]) -> float:
        if delays is None:
            return 0
        kind = f"{event['source']}/{event['detail-type']}"
        if kind not in delays:
            return 0
        digest = hashlib.sha256(f"{seed}/{event['id']}".encode()).digest()
        return delays[kind] * (digest[0] / 255)

    behaviour = Behaviour(delay=late)
    with LocalCloud(behaviour=behaviour, store="memory") as cloud:
        cloud.create_vault(VAULT)
        ids = cloud.launch(4, tags={"backup-job": "true"})
        behaviour.script_status[(ids[0], "PRE_SCRIPT")] = "Failed"
        behaviour.backup_state[ids[1]] = "FAILED"
        run_id = cloud.run(seed_input())
        run = cloud.store.get_run(run_id)
        position = {instance_id: n for n, instance_id in enumerate(ids)}
        instances = sorted(
            cloud.store.list_instances(run_id), key=lambda i: position[i.instance_id]
        )
        header = run.model_dump(include={"status", "reason", "plan", "instance_count"})
        header["counts"] = sorted(run.counts.items())
        text = repr([header] + [i.model_dump(exclude={"arn", "run_id"}) for i in instances])
        for instance_id, n in position.items():
            text = text.replace(instance_id, f"I{n}")
        text = MADE_UP.sub(r"'\\1': ID", TIMESTAMP.sub(r"'\\1': T", text))
        text = MADE_UP_LISTS.sub(r"'\\1': IDS", text)
        effects = sorted(
            (f"{service}:{operation}", len(params.get("InstanceIds", [None])))
            for service, operation, params in cloud.calls
            if service in ("ssm", "ec2", "backup") and operation != "DescribeInstances"
            and not operation.startswith(("Get", "Describe", "List"))
        )  # fmt: skip
        return text, effects


KINDS = [
    "aws.ssm/EC2 Command Invocation Status-change Notification",
    "aws.ec2/EC2 Instance State-change Notification",
    "aws.backup/Backup Job State Change",
    "prepost-backup/PrePostBackup Phase Requested",
    "prepost-backup/PrePostBackup Phase Completed",
]
IN_ORDER = outcome(None, 0)


@settings(
    max_examples=25, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(
    delays=st.dictionaries(st.sampled_from(KINDS), st.integers(1, 1800), min_size=1),
    seed=st.integers(0, 2**16),
)
def test_any_delivery_order_gives_the_same_result(delays: dict[str, int], seed: int) -> None:
    assert outcome(delays, seed) == IN_ORDER
