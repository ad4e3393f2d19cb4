"""The summary of a completed run on the operators' SNS topic: when, what, and only once."""

from __future__ import annotations

import pytest

from chalicelib.models.state import InstanceStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import calls, completed_events, outcome

OUTPUT_BUCKET = "backup-status-bucket-example"


def test_a_succeeded_run_is_announced_only_when_always_is_asked(cloud: LocalCloud) -> None:
    quiet = cloud.notify_topic("failures", name="failures-only")
    ids = cloud.launch(2, tags={"backup-job": "true"})
    first = cloud.run(seed_input())
    assert outcome(cloud, first)[0].status is RunStatus.SUCCEEDED
    assert cloud.notifications(quiet) == []
    assert calls(cloud, "sns", "Publish") == []

    loud = cloud.notify_topic("always", name="everything")
    second = cloud.run(seed_input())
    [(subject, message)] = cloud.notifications(loud)
    assert subject == f"prepost-backup: SUCCEEDED run {second}"
    assert f"Run {second}: SUCCEEDED" in message
    assert "Profile:   none" in message
    assert "Started:   2026-11-26T" in message
    # The seed example in local time: its jobs (2 hours) end 2:01:15 after the start (the
    # instances were released at capture, minutes in).
    assert "Duration:  2:01:15 (7275 s)" in message
    assert "Instances: 2\n  SUCCEEDED              2\n" in message
    assert "Needs attention" not in message
    for phase, key_prefix in (
        ("pre_script", "pre-script-logs"),
        ("post_script", "post-script-logs"),
    ):
        assert f"s3://{OUTPUT_BUCKET}/{key_prefix}/{second}/{phase}/" in message
    assert all(instance_id not in message for instance_id in ids)
    assert outcome(cloud, second)[0].notified_at is not None


def test_a_mixed_run_names_the_failed_instance_and_why(
    cloud: LocalCloud, behaviour: Behaviour
) -> None:
    topic = cloud.notify_topic()
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = "EXPIRED"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS
    [(subject, message)] = cloud.notifications(topic)
    assert subject == f"prepost-backup: COMPLETED_WITH_ERRORS run {run_id}"
    assert f"Reason:    {run.reason}" in message
    assert "  FAILED                 1\n" in message
    assert "  SUCCEEDED              1\n" in message
    assert "Needs attention: 1 of 2 instances" in message
    assert f"  {bad} FAILED: {instances[bad].reason}\n" in message
    assert "EXPIRED" in message
    assert good not in message
    assert f"s3://{OUTPUT_BUCKET}/pre-script-logs/{run_id}/pre_script/" in message


def test_a_failed_run_lists_every_instance(cloud: LocalCloud, behaviour: Behaviour) -> None:
    topic = cloud.notify_topic()
    ids = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state.update(dict.fromkeys(ids, "FAILED"))
    run_id = cloud.run(seed_input())

    assert outcome(cloud, run_id)[0].status is RunStatus.FAILED
    [(subject, message)] = cloud.notifications(topic)
    assert subject == f"prepost-backup: FAILED run {run_id}"
    assert "Reason:    no instance was backed up" in message
    listed = message.split("Needs attention: 2 of 2 instances\n")[1].splitlines()[:2]
    assert sorted(listed) == [f"  {i} FAILED: BACKUP: backup job FAILED: Backup job failed "
                              "(simulated)" for i in sorted(ids)]  # fmt: skip


def test_an_instance_left_stopped_comes_first(cloud: LocalCloud, behaviour: Behaviour) -> None:
    topic = cloud.notify_topic()
    stuck, failed = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state.update({stuck: "FAILED", failed: "FAILED"})
    behaviour.power_errors[(stuck, "StartInstances")] = "InsufficientInstanceCapacity"
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.TIMED_OUT  # the start ran out of time
    assert instances[stuck].status is InstanceStatus.STUCK_STOPPED
    [(subject, message)] = cloud.notifications(topic)
    assert subject == f"prepost-backup: TIMED_OUT run {run_id}"
    listed = message.split("Needs attention: 2 of 2 instances\n")[1].splitlines()
    assert listed[0].startswith("  (STUCK_STOPPED:")
    assert listed[1].startswith(f"  {stuck} STUCK_STOPPED: START: ")
    assert listed[2].startswith(f"  {failed} FAILED: BACKUP: ")


def test_a_rejected_run_is_announced_with_its_errors(cloud: LocalCloud) -> None:
    topic = cloud.notify_topic()
    cloud.launch(1, tags={"backup-job": "true"})
    bad_input = seed_input()
    bad_input["BackupDetails"]["BackupVaultName"] = "somebody-elses-vault"
    run_id = cloud.run(bad_input)

    [completed] = completed_events(cloud, run_id)
    assert completed["status"] == "REJECTED"
    [(subject, message)] = cloud.notifications(topic)
    assert subject == f"prepost-backup: REJECTED run {run_id}"
    assert "Reason:    not allowed by this deployment" in message
    assert "Instances: 0" in message
    [error] = completed["errors"]
    assert f"Errors:\n  - {error}\n" in message
    assert "somebody-elses-vault" in message
    assert "Duration:  0:00:00" in message
    assert "Script output" not in message  # no script ran


def test_nothing_is_published_without_a_topic(cloud: LocalCloud, behaviour: Behaviour) -> None:
    bad, _ = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.backup_state[bad] = "FAILED"
    run_id = cloud.run(seed_input())

    assert outcome(cloud, run_id)[0].status is RunStatus.COMPLETED_WITH_ERRORS
    assert cloud.invocations["notify_run_completed"] == 1
    assert [c for c in cloud.calls if c[0] == "sns"] == []
    assert outcome(cloud, run_id)[0].notified_at is None


@pytest.mark.parametrize("concurrent", [False, True], ids=["in-turn", "at-once"])
def test_a_repeated_run_completed_event_publishes_once(
    cloud: LocalCloud, behaviour: Behaviour, concurrent: bool
) -> None:
    topic = cloud.notify_topic("always")
    cloud.launch(2, tags={"backup-job": "true"})
    behaviour.copies = lambda e: 3 if e["detail-type"] == "PrePostBackup Run Completed" else 1
    behaviour.concurrent_copies = concurrent
    run_id = cloud.run(seed_input())

    assert cloud.invocations["notify_run_completed"] == 3
    assert len(cloud.notifications(topic)) == 1
    assert len(calls(cloud, "sns", "Publish")) == 1
    assert outcome(cloud, run_id)[0].notified_at is not None


def test_a_crash_right_after_publishing_does_not_publish_again(
    cloud: LocalCloud, behaviour: Behaviour
) -> None:
    topic = cloud.notify_topic("always")
    cloud.launch(1, tags={"backup-job": "true"})
    behaviour.crash_after["Publish"] = 1
    cloud.run(seed_input())

    assert cloud.invocations["notify_run_completed"] == 2  # Lambda retried the dead one
    assert len(cloud.notifications(topic)) == 1


def test_a_refused_publish_gives_the_claim_back_so_a_retry_sends_it(
    cloud: LocalCloud, behaviour: Behaviour
) -> None:
    missing = cloud.arn("sns", "not-yet-created")
    cloud.configure_stage(PREPOST_NOTIFY_TOPIC_ARN=missing, PREPOST_NOTIFY_ON="always")
    cloud.launch(1, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input())

    # Lambda tried three times; each attempt gave its claim back.
    assert len(calls(cloud, "sns", "Publish")) == 3
    [(handler, event, error)] = cloud.dead_letters
    assert handler == "notify_run_completed"
    assert "sns:Publish failed" in str(error)
    assert outcome(cloud, run_id)[0].notified_at is None
    cloud.dead_letters.clear()

    topic = cloud.notify_topic("always", name="not-yet-created")
    assert topic == missing
    cloud.deliver(event)  # the dead letter, replayed
    [(subject, _)] = cloud.notifications(topic)
    assert run_id in (subject or "")
    assert outcome(cloud, run_id)[0].notified_at is not None
