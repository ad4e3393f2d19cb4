"""Whole runs through the handlers (chalice.test.Client) against moto and the emulation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from chalicelib.gateways.ec2 import Ec2Gateway
from chalicelib.logic.decisions import idempotency_token
from chalicelib.models.state import InstanceStatus, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import LocalCloud
from tests.conftest import VAULT, seed_input
from tests.functional.helpers import (
    calls,
    completed_events,
    outcome,
    parameter,
    script_targets,
    statuses,
)

ALL_SUCCEEDED = dict.fromkeys(Phase, PhaseStatus.SUCCEEDED)


def by_ids(detail: dict, ids: list[str]) -> dict:
    detail = {k: v for k, v in detail.items() if not k.startswith("TargetEC2Tag")}
    return detail | {"TargetEC2Instances": ids}


def test_seed_example_unchanged_succeeds_with_stop_and_start(cloud: LocalCloud) -> None:
    ids = cloud.launch(3, tags={"backup-job": "true"})
    cloud.launch(2, tags={"backup-job": "false"})  # not targeted

    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.counts == {"SUCCEEDED": 3}
    assert sorted(instances) == sorted(ids)
    for instance_id, instance in instances.items():
        assert statuses(instance) == ALL_SUCCEEDED
        assert instance.status is InstanceStatus.SUCCEEDED
        backup = instance.phase(Phase.BACKUP)
        assert backup.backup_job_id
        assert backup.recovery_point_arn
        assert backup.recovery_point_arn.startswith("arn:aws:ec2:us-east-1::image/ami-")
        assert backup.consistency == "app-consistent"
        assert instance.phase(Phase.PRE_SCRIPT).command_id
        assert cloud.state_of(instance_id) == "running"
    assert len(calls(cloud, "ec2", "StopInstances")) == 1
    assert len(calls(cloud, "ec2", "StartInstances")) == 1
    assert completed_events(cloud, run_id) == [
        {
            "run_id": run_id,
            "status": "SUCCEEDED",
            "reason": None,
            "errors": [],
            "counts": {"SUCCEEDED": 3},
            "instance_count": 3,
            "created_at": run.created_at,
            "finished_at": run.finished_at,
            "profile": None,  # not started from a stored profile
            "slot": None,
        }
    ]
    # Leases are released at the end of the run.
    assert all(cloud.store.get_lease(i) is None for i in ids)


def test_scripts_go_through_aws_run_remote_script_by_id(cloud: LocalCloud) -> None:
    ids = cloud.launch(2, tags={"backup-job": "true"})
    detail = seed_input()
    detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"] |= {
        "WorkingDirectory": "/opt/app",
        "ExecutionTimeoutInSeconds": 900,
    }
    run_id = cloud.run(detail)

    pre, post = calls(cloud, "ssm", "SendCommand")
    assert pre["DocumentName"] == "AWS-RunRemoteScript"
    assert sorted(pre["InstanceIds"]) == sorted(ids)
    assert "Targets" not in pre  # never by tag: the ids resolved at the start
    assert parameter(pre, "sourceType") == "S3"
    assert parameter(pre, "sourceInfo") == {
        "path": "https://backup-status-bucket-example.s3.amazonaws.com/scripts/pre-script.sh"
    }
    assert parameter(pre, "commandLine") == "pre-script.sh"
    assert parameter(pre, "workingDirectory") == "/opt/app"
    assert parameter(pre, "executionTimeout") == "900"
    assert pre["TimeoutSeconds"] == 600
    assert pre["OutputS3BucketName"] == "backup-status-bucket-example"
    assert pre["OutputS3KeyPrefix"] == f"pre-script-logs/{run_id}/pre_script"
    assert parameter(post, "executionTimeout") == "3600"
    assert post["OutputS3KeyPrefix"] == f"post-script-logs/{run_id}/post_script"


def test_backup_job_request(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    detail = seed_input()
    detail["BackupDetails"] |= {
        "StartWindowMinutes": 120,
        "CompleteWindowMinutes": 720,
        "Lifecycle": {"DeleteAfterDays": 35},
        "RecoveryPointTags": {"team": "db"},
        "BackupOptions": {"WindowsVSS": "enabled"},
    }
    run_id = cloud.run(detail)

    [request] = calls(cloud, "backup", "StartBackupJob")
    assert request == {
        "BackupVaultName": VAULT,
        "ResourceArn": f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}",
        "IamRoleArn": "arn:aws:iam::123456789012:role/BackupJobExecutionRole",
        "IdempotencyToken": idempotency_token(run_id, instance_id),
        "StartWindowMinutes": 120,
        "CompleteWindowMinutes": 720,
        "Lifecycle": {"DeleteAfterDays": 35},
        "RecoveryPointTags": {
            "team": "db",
            "prepost:run-id": run_id,
            # Copied by AWS Backup to the AMI: how a capture poll finds the instance's image.
            "prepost:instance-id": instance_id,
            "prepost:consistency": "app-consistent",
        },
        "BackupOptions": {"WindowsVSS": "enabled"},
    }


@pytest.mark.parametrize(
    ("drop", "expected_plan"),
    [
        ("PreBackupScriptDetails", [Phase.STOP, Phase.BACKUP, Phase.START, Phase.POST_SCRIPT]),
        ("PostBackupScriptDetails", [Phase.PRE_SCRIPT, Phase.STOP, Phase.BACKUP, Phase.START]),
    ],
)
def test_without_one_script(cloud: LocalCloud, drop: str, expected_plan: list[Phase]) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    detail = seed_input()
    del detail["RemoteRunCommandDetails"][drop]
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.plan == expected_plan
    assert len(calls(cloud, "ssm", "SendCommand")) == 1
    for instance in instances.values():
        assert set(instance.phases) == set(expected_plan)


def test_without_stop_and_start(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input() | {"StartStopEC2Required": False})

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.plan == [Phase.PRE_SCRIPT, Phase.BACKUP, Phase.POST_SCRIPT]
    assert not calls(cloud, "ec2", "StopInstances")
    assert not calls(cloud, "ec2", "StartInstances")
    assert {i.phase(Phase.BACKUP).consistency for i in instances.values()} == {"app-consistent"}


def test_without_any_script_and_without_stop_the_label_is_crash_consistent(
    cloud: LocalCloud,
) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    detail = seed_input() | {"StartStopEC2Required": False, "RemoteRunCommandDetails": {}}
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    [instance] = instances.values()
    assert instance.phase(Phase.BACKUP).consistency == "crash-consistent"
    [request] = calls(cloud, "backup", "StartBackupJob")
    assert request["RecoveryPointTags"]["prepost:consistency"] == "crash-consistent"


def test_by_instance_ids(cloud: LocalCloud) -> None:
    ids = cloud.launch(3)
    other = cloud.launch(1)
    missing = "i-0123456789abcdef0"
    run_id = cloud.run(by_ids(seed_input(), [*ids, missing]))

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS  # one id does not exist
    assert sorted(instances) == sorted([*ids, missing])
    assert instances[missing].status is InstanceStatus.SKIPPED
    assert instances[missing].reason == "instance not found in this account and region"
    assert all(instances[i].status is InstanceStatus.SUCCEEDED for i in ids)
    assert other[0] not in script_targets(cloud, Phase.PRE_SCRIPT)


def test_three_instances_in_one_reservation_are_all_targeted(cloud: LocalCloud) -> None:
    ids = cloud.launch(3, tags={"backup-job": "true"})  # one run_instances call
    reservations = cloud.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    assert len(reservations) == 1
    run_id = cloud.run(seed_input())
    _, instances = outcome(cloud, run_id)
    assert sorted(instances) == sorted(ids)


def test_describe_instances_pages_are_all_read(cloud: LocalCloud) -> None:
    ids = [cloud.launch(1, tags={"backup-job": "true"})[0] for _ in range(12)]
    pages_before = len(calls(cloud, "ec2", "DescribeInstances"))
    gateway = Ec2Gateway(cloud.session.client("ec2"), "aws", "us-east-1", page_size=5)

    found = gateway.instances_by_tag("backup-job", "true")

    assert sorted(t.instance_id for t in found) == sorted(ids)
    assert len(calls(cloud, "ec2", "DescribeInstances")) - pages_before == 3


def test_120_instances_are_sent_scripts_in_batches_of_50(cloud: LocalCloud) -> None:
    ids = cloud.launch(120, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input() | {"StartStopEC2Required": False})

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert len(instances) == 120
    for phase in (Phase.PRE_SCRIPT, Phase.POST_SCRIPT):
        sizes = [
            len(p["InstanceIds"])
            for p in calls(cloud, "ssm", "SendCommand")
            if p["Comment"].endswith(str(phase))
        ]
        assert sorted(sizes) == [20, 50, 50]
        assert sorted(script_targets(cloud, phase)) == sorted(ids)
    assert len(calls(cloud, "backup", "StartBackupJob")) == 120


def test_instance_stopped_before_the_run_is_backed_up_and_never_started(
    cloud: LocalCloud,
) -> None:
    running = cloud.launch(2, tags={"backup-job": "true"})
    [stopped] = cloud.launch(1, tags={"backup-job": "true"}, state="stopped")

    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    cold = instances[stopped]
    assert cold.original_state == "stopped"
    assert cold.phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    assert cold.phase(Phase.BACKUP).consistency == "app-consistent"
    for phase in (Phase.PRE_SCRIPT, Phase.STOP, Phase.START, Phase.POST_SCRIPT):
        assert cold.phase(phase).status is PhaseStatus.SKIPPED
        assert cold.phase(phase).reason
    assert stopped not in script_targets(cloud, Phase.PRE_SCRIPT)
    assert all(stopped not in p["InstanceIds"] for p in calls(cloud, "ec2", "StopInstances"))
    assert all(stopped not in p["InstanceIds"] for p in calls(cloud, "ec2", "StartInstances"))
    assert cloud.state_of(stopped) == "stopped"
    assert all(cloud.state_of(i) == "running" for i in running)


def test_terminated_instance_is_skipped_with_a_reason(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    [gone] = cloud.launch(1, tags={"backup-job": "true"}, state="terminated")
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED  # a terminated instance is not an error
    assert instances[gone].status is InstanceStatus.SKIPPED
    assert instances[gone].reason == "instance is terminated"
    assert gone not in script_targets(cloud, Phase.PRE_SCRIPT)


def test_no_instance_matches_the_tag(cloud: LocalCloud) -> None:
    run_id = cloud.run(seed_input())
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.FAILED
    assert run.reason == "no target instances were found"
    assert instances == {}
    assert completed_events(cloud, run_id)[0]["status"] == "FAILED"


def test_a_run_whose_every_target_is_skipped_ends_in_its_start(cloud: LocalCloud) -> None:
    missing = ["i-0000000000000dead", "i-0000000000000beef"]
    detail = seed_input() | {"TargetEC2Instances": missing}
    del detail["TargetEC2TagKey"], detail["TargetEC2TagValue"]
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.FAILED
    assert set(instances) == set(missing)
    assert all(i.status is InstanceStatus.SKIPPED for i in instances.values())
    assert cloud.invocations["start_run_handler"] == 1
    assert [e["status"] for e in completed_events(cloud, run_id)] == ["FAILED"]


def test_arns_use_the_partition_of_the_region() -> None:
    with LocalCloud(region="cn-north-1") as cloud:
        cloud.create_vault(VAULT)
        [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
        cloud.run(seed_input())
        [request] = calls(cloud, "backup", "StartBackupJob")
        assert request["ResourceArn"] == (
            f"arn:aws-cn:ec2:cn-north-1:123456789012:instance/{instance_id}"
        )


def test_phases_are_barriers_inside_a_group(behaviour, cloud: LocalCloud) -> None:
    fast, slow = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.script_seconds_by_instance[slow] = 900
    cloud.run(seed_input())

    def pre_script_done(instance_id: str) -> datetime:
        [when] = [
            when
            for when, what in cloud.timeline[: len(cloud.timeline) // 2]
            if what.startswith("event aws.ssm") and instance_id in what and "Success" in what
        ]
        return when

    [stop] = [when for when, what in cloud.timeline if what == "call ec2:StopInstances"]
    assert pre_script_done(slow) - pre_script_done(fast) > timedelta(seconds=800)
    assert stop >= pre_script_done(slow)  # the fast one waited for the slow one


def test_group_by_instance_lets_each_instance_go_at_its_own_pace(
    behaviour, cloud: LocalCloud
) -> None:
    fast, slow = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.script_seconds_by_instance[slow] = 900
    run_id = cloud.run(seed_input() | {"GroupBy": "instance"})

    run, _ = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert run.groups_total == 2
    stops = [p["InstanceIds"] for p in calls(cloud, "ec2", "StopInstances")]
    assert stops == [[fast], [slow]]


def test_the_same_start_event_delivered_twice_makes_one_run(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    event = cloud.start_event(seed_input())
    for _ in range(2):  # EventBridge delivers at least once
        cloud.publish(event)
        cloud.drain()
    assert cloud.invocations["start_run_handler"] == 2
    assert len(calls(cloud, "backup", "StartBackupJob")) == 2  # one per instance
    assert len([e for e in cloud.emitted if e["detail-type"].endswith("Run Started")]) == 1
