"""A report that outruns the record of its side effect is retried, not dropped."""

from __future__ import annotations

import pytest

from chalicelib.dependencies import services
from chalicelib.errors import CorrelationPendingError
from chalicelib.logic.results import backup_job_changed, script_invocation_changed
from chalicelib.models.events import BackupJobEvent, SsmInvocationEvent
from chalicelib.models.state import Phase, PhaseStatus
from prepost.local.cloud import Behaviour, LocalCloud
from prepost.samples import load_event
from tests.conftest import seed_input


def ssm_event(command_id: str, instance_id: str, status: str = "Success") -> SsmInvocationEvent:
    event = load_event("aws-ssm-invocation-success")
    event["detail"] |= {"command-id": command_id, "instance-id": instance_id, "status": status}
    return SsmInvocationEvent.model_validate(event)


def test_ssm_report_before_its_command_id_is_recorded_is_retried(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.script_seconds = 3600
    cloud.publish(cloud.start_event(seed_input()))
    cloud.step(3)  # start, Run Started, Phase Requested: the script is running
    lease = services().store.get_lease(instance_id)
    assert lease is not None
    store = services().store
    instance = store.get_instance(lease.run_id, lease.group_id, instance_id)
    assert instance is not None
    assert instance.phase(Phase.PRE_SCRIPT).status is PhaseStatus.IN_PROGRESS
    # As if SendCommand had returned and the report came before the id was written:
    store.set_phase_result(
        lease.run_id, lease.group_id, instance_id, Phase.PRE_SCRIPT,
        instance.phase(Phase.PRE_SCRIPT).model_copy(update={"command_id": None}),
        expected=PhaseStatus.IN_PROGRESS,
    )  # fmt: skip

    with pytest.raises(CorrelationPendingError):
        script_invocation_changed(
            services(), ssm_event("11111111-2222-3333-4444-555555555555", instance_id)
        )


def test_ssm_report_of_a_foreign_command_is_ignored(cloud: LocalCloud) -> None:
    [instance_id] = cloud.launch(1)
    script_invocation_changed(
        services(), ssm_event("11111111-2222-3333-4444-555555555555", instance_id)
    )


def test_ssm_report_for_a_command_whose_record_was_lost_is_adopted(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.script_seconds = 3600
    cloud.publish(cloud.start_event(seed_input()))
    cloud.step(3)  # the pre-script was sent
    store = services().store
    lease = store.get_lease(instance_id)
    assert lease is not None
    sent = store.get_instance(lease.run_id, lease.group_id, instance_id)
    assert sent is not None
    command_id = sent.phase(Phase.PRE_SCRIPT).command_id
    assert command_id
    # As if the handler had died between SendCommand and recording the command:
    store.set_phase_result(
        lease.run_id, lease.group_id, instance_id, Phase.PRE_SCRIPT,
        sent.phase(Phase.PRE_SCRIPT).model_copy(update={"command_id": None, "sent": None}),
        expected=PhaseStatus.IN_PROGRESS,
    )  # fmt: skip
    cloud.session.client("dynamodb").delete_item(
        TableName=cloud.table_name, Key={"pk": {"S": f"CMD#{command_id}"}, "sk": {"S": "CMD"}}
    )

    script_invocation_changed(services(), ssm_event(command_id, instance_id))

    done = store.get_instance(lease.run_id, lease.group_id, instance_id)
    assert done is not None
    assert done.phase(Phase.PRE_SCRIPT).status is PhaseStatus.SUCCEEDED
    assert done.phase(Phase.PRE_SCRIPT).command_id == command_id


def backup_event(backup_job_id: str, instance_id: str) -> BackupJobEvent:
    event = load_event("aws-backup-job-completed")
    event["detail"] |= {
        "backupJobId": backup_job_id,
        "resourceArn": f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}",
    }
    return BackupJobEvent.model_validate(event)


def test_backup_report_before_its_job_is_recorded_is_retried(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    """Started jobs are recorded a few at a time: a job that ends at once may report
    before its record; the report is retried, not dropped as a foreign job's."""
    [instance_id] = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.crash_at_call[("start_backups", "StartBackupJob")] = 1
    cloud.publish(cloud.start_event(seed_input()))
    for _ in range(200):
        if any(what.startswith("crash after") for _, what in cloud.timeline):
            break
        assert cloud.step(1) == 1
    store = services().store
    lease = store.get_lease(instance_id)
    assert lease is not None
    instance = store.get_instance(lease.run_id, lease.group_id, instance_id)
    assert instance is not None
    backup = instance.phase(Phase.BACKUP)
    assert backup.status is PhaseStatus.IN_PROGRESS
    assert backup.backup_job_id is None

    with pytest.raises(CorrelationPendingError):
        backup_job_changed(services(), backup_event("JOB-NOT-RECORDED", instance_id))
    # A job of an instance no run holds is not ours: ignored, not retried.
    [other] = cloud.launch(1)
    backup_job_changed(services(), backup_event("JOB-OF-ANOTHER-TOOL", other))
