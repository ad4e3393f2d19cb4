"""The notification of a completed run: who gets one, and what it says, within SNS's limits."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from chalicelib.config import NotifyOn, Settings
from chalicelib.logic.notify import (
    MAX_MESSAGE_BYTES,
    MAX_SUBJECT_CHARS,
    summary,
    wants_notification,
)
from chalicelib.models.state import InstanceRecord, InstanceStatus, Phase, RunRecord, RunStatus
from prepost import policies
from prepost.samples import load_event

RUN_ID = "20261126T020000Z-ed1ec14a30"
PLAN = list(Phase)


def run_record(status: RunStatus = RunStatus.COMPLETED_WITH_ERRORS, **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "run_id": RUN_ID,
        "status": status,
        "created_at": "2026-11-26T02:00:00Z",
        "finished_at": "2026-11-26T04:02:25Z",
        "input_json": json.dumps(load_event("start-seed-example")["detail"]),
        "plan": PLAN,
        "reason": "some instances did not fully succeed",
    }
    return RunRecord.model_validate(values | fields)


def instance(
    number: int,
    status: InstanceStatus,
    reason: str | None = None,
    group: str = "run",
    **more: object,
) -> InstanceRecord:
    return InstanceRecord.model_validate(
        {"run_id": RUN_ID, "group_id": group, "group_label": group, "original_state": "running",
         "instance_id": f"i-{number:017x}", "status": status, "reason": reason} | more
    )  # fmt: skip


@pytest.mark.parametrize("status", list(RunStatus))
def test_who_is_notified(status: RunStatus) -> None:
    unfinished = status in (RunStatus.STARTING, RunStatus.RUNNING)
    assert wants_notification(status, NotifyOn.ALWAYS) is not unfinished
    expected = not unfinished and status is not RunStatus.SUCCEEDED
    assert wants_notification(status, NotifyOn.FAILURES) is expected


def test_the_summary_of_a_mixed_run() -> None:
    instances = [
        instance(1, InstanceStatus.SUCCEEDED),
        instance(2, InstanceStatus.COMPLETED_WITH_ERRORS, "POST_SCRIPT: SSM status Failed"),
        instance(3, InstanceStatus.FAILED, "BACKUP: backup job EXPIRED"),
        instance(4, InstanceStatus.STUCK_STOPPED, "START: InsufficientInstanceCapacity"),
        instance(5, InstanceStatus.SKIPPED, "instance is terminated"),  # not an error
        instance(6, InstanceStatus.SKIPPED, "instance not found", skip_is_error=True),
    ]
    counts = {"SUCCEEDED": 1, "COMPLETED_WITH_ERRORS": 1, "FAILED": 1, "STUCK_STOPPED": 1,
              "SKIPPED": 2}  # fmt: skip
    subject, message = summary(run_record(counts=counts, profile="nightly-db"), instances)

    assert subject == f"prepost-backup: COMPLETED_WITH_ERRORS run {RUN_ID} (profile nightly-db)"
    assert message == "\n".join([
        f"Run {RUN_ID}: COMPLETED_WITH_ERRORS",
        "",
        "Reason:    some instances did not fully succeed",
        "Profile:   nightly-db",
        "Started:   2026-11-26T02:00:00Z",
        "Finished:  2026-11-26T04:02:25Z",
        "Duration:  2:02:25 (7345 s)",
        "",
        "Instances: 6",
        "  COMPLETED_WITH_ERRORS  1",
        "  FAILED                 1",
        "  SKIPPED                2",
        "  STUCK_STOPPED          1",
        "  SUCCEEDED              1",
        "",
        "Needs attention: 4 of 6 instances",
        "  (STUCK_STOPPED: this run stopped it and could not start it: start it)",
        "  i-00000000000000004 STUCK_STOPPED: START: InsufficientInstanceCapacity",
        "  i-00000000000000003 FAILED: BACKUP: backup job EXPIRED",
        "  i-00000000000000002 COMPLETED_WITH_ERRORS: POST_SCRIPT: SSM status Failed",
        "  i-00000000000000006 SKIPPED: instance not found",
        "",
        "Script output (S3):",
        f"  PRE_SCRIPT   s3://backup-status-bucket-example/pre-script-logs/{RUN_ID}/pre_script/",
        f"  POST_SCRIPT  s3://backup-status-bucket-example/post-script-logs/{RUN_ID}/post_script/",
        "",
        f"Details: prepost status {RUN_ID}",
        "",
    ])  # fmt: skip


def test_groups_are_named_when_there_are_several() -> None:
    instances = [instance(1, InstanceStatus.FAILED, "BACKUP: FAILED", group="cluster=db"),
                 instance(2, InstanceStatus.SUCCEEDED, group="cluster=web")]  # fmt: skip
    _, message = summary(run_record(), instances)
    assert "  i-00000000000000001 [cluster=db] FAILED: BACKUP: FAILED\n" in message


def test_a_rejected_run_shows_its_errors_and_no_script_output() -> None:
    errors = ["BackupDetails.BackupVaultName: 'x' is not in PREPOST_ALLOWED_BACKUP_VAULTS",
              "TargetEC2Instances: not EC2 instance ids"]  # fmt: skip
    rejected = run_record(RunStatus.REJECTED, finished_at="2026-11-26T02:00:00Z", plan=[],
                          input_json='{"no": "input"}', errors=errors,
                          reason="invalid run input")  # fmt: skip
    subject, message = summary(rejected, [])
    assert subject == f"prepost-backup: REJECTED run {RUN_ID}"
    assert "Errors:\n  - " + errors[0] + "\n  - " + errors[1] + "\n" in message
    assert "Instances: 0\n" in message
    assert "Duration:  0:00:00 (0 s)" in message
    assert "Script output" not in message
    assert "Needs attention" not in message


def test_only_the_phases_of_the_plan_show_their_output() -> None:
    _, message = summary(run_record(plan=[Phase.PRE_SCRIPT, Phase.BACKUP]), [])
    assert "/pre_script/" in message
    assert "/post_script/" not in message


def test_the_subject_is_one_short_line_of_ascii() -> None:
    profile = "nächtlich\nund noch ein sehr langer Name, der nicht in eine Betreffzeile passt" * 2
    subject, _ = summary(run_record(profile=profile), [])
    assert len(subject) <= MAX_SUBJECT_CHARS < 100
    assert subject.isascii()
    assert subject.isprintable()
    assert subject.endswith("...")
    assert subject.startswith(
        f"prepost-backup: COMPLETED_WITH_ERRORS run {RUN_ID} (profile n?chtlich und"
    )


@pytest.mark.parametrize("max_bytes", [MAX_MESSAGE_BYTES, 4_000])
def test_a_long_list_is_cut_to_fit_with_and_n_more(max_bytes: int) -> None:
    # Multi-byte reasons: the limit is in bytes of UTF-8, not in characters.
    instances = [instance(n, InstanceStatus.FAILED, "BACKUP: é" * 200) for n in range(3000)]
    _, message = summary(run_record(counts={"FAILED": 3000}), instances, max_bytes)

    assert len(message.encode()) <= max_bytes
    listed = [line for line in message.splitlines() if line.startswith("  i-")]
    assert 0 < len(listed) < 3000
    assert all(line.endswith("...") and len(line) < 600 for line in listed)  # one reason: cut
    more = f"  ... and {3000 - len(listed)} more (prepost status {RUN_ID} lists them all)"
    assert more in message.splitlines()
    assert message.endswith(f"Details: prepost status {RUN_ID}\n")  # the tail is always kept


def test_a_list_that_fits_is_not_cut() -> None:
    instances = [instance(n, InstanceStatus.FAILED, "BACKUP: FAILED") for n in range(100)]
    _, message = summary(run_record(), instances)
    assert len([line for line in message.splitlines() if line.startswith("  i-")]) == 100
    assert "more (prepost status" not in message


def test_the_notification_settings_are_checked() -> None:
    topic = "arn:aws-cn:sns:cn-north-1:123456789012:ops.fifo-alerts"
    settings = Settings(table_name="state", notify_topic_arn=topic, notify_on="always")
    assert settings.notify_on is NotifyOn.ALWAYS
    assert Settings(table_name="state").notify_topic_arn == ""  # no topic: nothing published
    with pytest.raises(ValidationError, match="notify_on"):
        Settings(table_name="state", notify_on="sometimes")
    with pytest.raises(ValidationError, match="notify_topic_arn"):
        Settings(table_name="state", notify_topic_arn="ops-notifications")


@pytest.mark.parametrize(
    ("key", "value"),
    [("PREPOST_NOTIFY_TOPIC_ARN", "ops-notifications"), ("PREPOST_NOTIFY_ON", "sometimes")],
)
def test_a_stage_with_settings_the_functions_would_refuse_cannot_be_rendered(
    key: str, value: str
) -> None:
    with pytest.raises(policies.PolicyError, match=key):
        policies.stage_values("dev", "notify_run_completed", {key: value})
