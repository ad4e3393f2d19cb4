"""The run input model accepts the seed's input unchanged and names every bad field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chalicelib.models.run_input import OnPreScriptFailure, RunInput, validation_messages
from tests.conftest import seed_input


def test_seed_example_is_accepted_unchanged() -> None:
    run_input = RunInput.model_validate(seed_input())
    assert run_input.target_ec2_tag_key == "backup-job"
    assert run_input.start_stop_ec2_required is True
    assert run_input.pre_script is not None
    assert run_input.pre_script.timeout_in_seconds == 600
    assert run_input.pre_script.execution_timeout_in_seconds == 3600  # the seed's constant
    assert run_input.post_script is not None
    assert run_input.backup_details.start_window_minutes == 60
    assert run_input.group_by == "run"
    assert run_input.on_pre_script_failure is OnPreScriptFailure.CONTINUE


def test_source_path_longer_than_the_seeds_stated_maximum_is_accepted() -> None:
    # The seed says 50 characters at most, but its own example is longer: the example wins.
    detail = seed_input()
    path = detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"]["SourceS3Path"]
    assert len(path) > 50
    RunInput.model_validate(detail)


@pytest.mark.parametrize("timeout", [600, "600", " 600 ", 600.0, 30, 2_592_000])
def test_timeout_as_number_or_numeric_string(timeout: object) -> None:
    detail = seed_input()
    detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"]["TimeoutInSeconds"] = timeout
    run_input = RunInput.model_validate(detail)
    assert run_input.pre_script is not None
    assert run_input.pre_script.timeout_in_seconds == int(float(str(timeout).strip()))


@pytest.mark.parametrize("timeout", [29, "29", 2_592_001, "ten", True, 600.5, None])
def test_timeout_out_of_range_or_not_a_number(timeout: object) -> None:
    detail = seed_input()
    detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"]["TimeoutInSeconds"] = timeout
    if timeout is None:  # an explicit null means "not given"
        RunInput.model_validate(detail)
        return
    with pytest.raises(ValidationError) as caught:
        RunInput.model_validate(detail)
    assert any(
        m.startswith("RemoteRunCommandDetails.PreBackupScriptDetails.TimeoutInSeconds")
        for m in validation_messages(caught.value)
    )


def test_by_ids_and_additive_options() -> None:
    detail = seed_input()
    del detail["TargetEC2TagKey"], detail["TargetEC2TagValue"]
    detail |= {
        "TargetEC2Instances": ["i-0123456789abcdef0", "i-0123456789abcdef0", "i-01234567"],
        "StartStopEC2Required": "false",
        "GroupBy": "tag:cluster",
        "OnPreScriptFailure": "abort",
    }
    detail["BackupDetails"] |= {
        "StartWindowMinutes": "90",
        "CompleteWindowMinutes": 600,
        "Lifecycle": {"DeleteAfterDays": 35},
        "RecoveryPointTags": {"team": "db"},
        "BackupOptions": {"WindowsVSS": "enabled"},
    }
    run_input = RunInput.model_validate(detail)
    assert run_input.target_ec2_instances == ["i-0123456789abcdef0", "i-01234567"]
    assert run_input.start_stop_ec2_required is False
    assert run_input.group_tag_key == "cluster"
    assert run_input.on_pre_script_failure is OnPreScriptFailure.ABORT
    assert run_input.backup_details.start_window_minutes == 90


def test_every_error_is_reported_at_once() -> None:
    detail = seed_input()
    detail["StartStopEC2Required"] = "sometimes"
    detail["BackupDetails"]["IamRoleArn"] = "not-an-arn"
    detail["RemoteRunCommandDetails"]["PostBackupScriptDetails"]["OutputS3BucketName"] = "ab"
    with pytest.raises(ValidationError) as caught:
        RunInput.model_validate(detail)
    fields = [m.split(":")[0] for m in validation_messages(caught.value)]
    assert fields == [
        "StartStopEC2Required",
        "RemoteRunCommandDetails.PostBackupScriptDetails.OutputS3BucketName",
        "BackupDetails.IamRoleArn",
    ]
