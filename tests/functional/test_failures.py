"""The failure policy (DESIGN.md sections 3 and 4), one failing instance at a time."""

from __future__ import annotations

import pytest

from chalicelib.models.state import InstanceStatus, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, outcome, script_targets, statuses

# Every terminal SSM status other than Success, as the event may report it.
SSM_FAILURES = [
    "Failed",
    "TimedOut",
    "Cancelled",
    "Undeliverable",
    "Delivery Timed Out",
    "Execution Timed Out",
    "Terminated",
    "Access Denied",
]
BACKUP_FAILURES = ["FAILED", "ABORTED", "EXPIRED", "PARTIAL"]


@pytest.mark.parametrize("ssm_status", SSM_FAILURES)
def test_pre_script_failure_with_continue_backs_up_crash_consistent_and_thaws(
    behaviour: Behaviour, cloud: LocalCloud, ssm_status: str
) -> None:
    bad, *good = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.script_status[(bad, "PRE_SCRIPT")] = ssm_status
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    failed = instances[bad]
    pre = failed.phase(Phase.PRE_SCRIPT)
    assert pre.status is PhaseStatus.FAILED
    assert pre.reason == f"SSM status {ssm_status}"
    assert failed.phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    assert failed.phase(Phase.BACKUP).consistency == "crash-consistent"
    assert failed.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED  # always thaw
    assert failed.status is InstanceStatus.COMPLETED_WITH_ERRORS
    assert bad in script_targets(cloud, Phase.POST_SCRIPT)
    for instance_id in good:
        assert instances[instance_id].status is InstanceStatus.SUCCEEDED
        assert instances[instance_id].phase(Phase.BACKUP).consistency == "app-consistent"
    tags = {
        request["ResourceArn"].rsplit("/", 1)[1]: request["RecoveryPointTags"]
        for request in calls(cloud, "backup", "StartBackupJob")
    }
    assert tags[bad]["prepost:consistency"] == "crash-consistent"
    assert all(cloud.state_of(i) == "running" for i in instances)


@pytest.mark.parametrize("ssm_status", SSM_FAILURES)
def test_pre_script_failure_with_abort_backs_up_none_of_the_group_and_thaws_all(
    behaviour: Behaviour, cloud: LocalCloud, ssm_status: str
) -> None:
    bad, *good = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.script_status[(bad, "PRE_SCRIPT")] = ssm_status
    run_id = cloud.run(seed_input() | {"OnPreScriptFailure": "abort"})

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.FAILED
    assert run.reason == "no instance was backed up"
    assert not calls(cloud, "backup", "StartBackupJob")
    assert not calls(cloud, "ec2", "StopInstances")
    assert not calls(cloud, "ec2", "StartInstances")
    assert instances[bad].phase(Phase.PRE_SCRIPT).reason == f"SSM status {ssm_status}"
    for instance in instances.values():
        backup = instance.phase(Phase.BACKUP)
        assert backup.status is PhaseStatus.SKIPPED
        assert backup.reason is not None
        assert "OnPreScriptFailure is abort" in backup.reason
        assert instance.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED
        assert instance.status is InstanceStatus.FAILED
    assert sorted(script_targets(cloud, Phase.POST_SCRIPT)) == sorted([bad, *good])


def test_abort_in_consistency_groups_only_stops_the_failing_group(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    db = cloud.launch(2, tags={"backup-job": "true", "cluster": "db"})
    web = cloud.launch(2, tags={"backup-job": "true", "cluster": "web"})
    behaviour.script_status[(db[0], "PRE_SCRIPT")] = "Failed"
    run_id = cloud.run(seed_input() | {"OnPreScriptFailure": "abort", "GroupBy": "tag:cluster"})

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert run.groups_total == 2
    assert all(instances[i].phase(Phase.BACKUP).status is PhaseStatus.SKIPPED for i in db)
    assert all(instances[i].status is InstanceStatus.SUCCEEDED for i in web)
    assert {instances[i].group_label for i in web} == {"cluster=web"}
    backed_up = {
        r["ResourceArn"].rsplit("/", 1)[1] for r in calls(cloud, "backup", "StartBackupJob")
    }
    assert backed_up == set(web)


@pytest.mark.parametrize("ssm_status", ["Failed", "TimedOut"])
def test_post_script_failure_keeps_the_backup(
    behaviour: Behaviour, cloud: LocalCloud, ssm_status: str
) -> None:
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.script_status[(bad, "POST_SCRIPT")] = ssm_status
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    assert instances[bad].phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    assert instances[bad].phase(Phase.BACKUP).recovery_point_arn
    assert instances[bad].status is InstanceStatus.COMPLETED_WITH_ERRORS
    assert instances[bad].reason == f"POST_SCRIPT: SSM status {ssm_status}"
    assert instances[good].status is InstanceStatus.SUCCEEDED


@pytest.mark.parametrize("state", BACKUP_FAILURES)
def test_backup_failure_fails_the_instance_which_is_still_started_and_thawed(
    behaviour: Behaviour, cloud: LocalCloud, state: str
) -> None:
    bad, *good = cloud.launch(3, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = state
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    failed = instances[bad]
    assert failed.status is InstanceStatus.FAILED
    backup = failed.phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.FAILED
    assert backup.reason is not None
    assert backup.reason.startswith(f"backup job {state}")
    assert backup.recovery_point_arn is None
    assert failed.phase(Phase.START).status is PhaseStatus.SUCCEEDED
    assert failed.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED
    assert cloud.state_of(bad) == "running"
    for instance_id in good:
        assert statuses(instances[instance_id]) == dict.fromkeys(Phase, PhaseStatus.SUCCEEDED)


def test_every_instance_failing_its_backup_fails_the_run(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    ids = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state.update(dict.fromkeys(ids, "EXPIRED"))
    run_id = cloud.run(seed_input())
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.FAILED
    assert all(cloud.state_of(i) == "running" for i in ids)
    assert all(
        i.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED for i in instances.values()
    )


def test_backup_that_aws_refuses_fails_that_instance_only(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    detail = seed_input()
    # Allowed by the dev stage, but no such vault exists in the account.
    detail["BackupDetails"]["BackupVaultName"] = "prepost-vault-2"
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.FAILED
    for instance in instances.values():
        assert instance.phase(Phase.BACKUP).reason is not None
        assert "ResourceNotFoundException" in (instance.phase(Phase.BACKUP).reason or "")
        assert instance.phase(Phase.START).status is PhaseStatus.SUCCEEDED  # restore power
        assert instance.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED  # thaw


def test_instance_terminated_during_the_run_does_not_block_it(cloud: LocalCloud) -> None:
    doomed, survivor = cloud.launch(2, tags={"backup-job": "true"})
    # Terminate one instance while the backups run, an hour into the run.
    cloud.schedule(3600, lambda: _terminate(cloud, doomed))
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    gone = instances[doomed]
    assert gone.terminated
    # Its backup job went on (AWS Backup snapshots the volumes that remain): the job's
    # end ends the phase, and its recovery point is on the record.
    backup = gone.phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.SUCCEEDED
    assert backup.recovery_point_arn
    assert gone.status is InstanceStatus.FAILED
    assert "terminated" in (gone.reason or "")
    # Released at its capture (minutes into the run), it had been started and thawed.
    assert gone.phase(Phase.BACKUP).released_at is not None
    assert gone.phase(Phase.START).status is PhaseStatus.SUCCEEDED
    assert gone.phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED
    assert instances[survivor].status is InstanceStatus.SUCCEEDED


def _terminate(cloud: LocalCloud, instance_id: str) -> dict:
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    return cloud._ec2_event(instance_id, "terminated")


def test_stop_failure_with_continue_backs_up_the_running_instance(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.power_errors[(bad, "StopInstances")] = "UnsupportedOperation"
    detail = seed_input() | {"RemoteRunCommandDetails": {}}  # stop is the only freeze
    run_id = cloud.run(detail)

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    stop = instances[bad].phase(Phase.STOP)
    assert stop.status is PhaseStatus.FAILED
    assert "UnsupportedOperation" in (stop.reason or "")
    assert instances[bad].phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    assert instances[bad].phase(Phase.BACKUP).consistency == "crash-consistent"
    assert instances[bad].phase(Phase.START).status is PhaseStatus.SKIPPED  # never stopped
    assert instances[good].phase(Phase.BACKUP).consistency == "app-consistent"
    assert cloud.state_of(bad) == "running"
    assert cloud.state_of(good) == "running"


def test_stop_failure_with_abort_skips_that_backup_only(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.power_errors[(bad, "StopInstances")] = "UnsupportedOperation"
    run_id = cloud.run(seed_input() | {"OnPreScriptFailure": "abort"})

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    backup = instances[bad].phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.SKIPPED
    assert backup.reason == "the stop failed and OnPreScriptFailure is abort"
    assert instances[bad].phase(Phase.POST_SCRIPT).status is PhaseStatus.SUCCEEDED  # thawed
    assert instances[good].status is InstanceStatus.SUCCEEDED


# Capacity is retried until the start deadline (by the reconciler); anything else fails
# at once, in the start handler.
@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "UnsupportedOperation"])
def test_start_failure_leaves_the_instance_stuck_stopped_and_says_so(
    behaviour: Behaviour, cloud: LocalCloud, logs, code: str
) -> None:
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.power_errors[(bad, "StartInstances")] = code
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    stuck = instances[bad]
    assert stuck.status is InstanceStatus.STUCK_STOPPED
    assert code in (stuck.reason or "")
    post = stuck.phase(Phase.POST_SCRIPT)  # the thaw is still sent, and reported
    assert post.status is PhaseStatus.FAILED
    assert post.reason == "SSM status Undeliverable"
    assert bad in script_targets(cloud, Phase.POST_SCRIPT)
    assert stuck.phase(Phase.BACKUP).status is PhaseStatus.SUCCEEDED
    assert cloud.state_of(bad) == "stopped"
    assert instances[good].status is InstanceStatus.SUCCEEDED
    [alarm] = logs.records("instance left stopped")
    assert alarm["level"] == "ERROR"
    assert alarm["instance_id"] == bad
