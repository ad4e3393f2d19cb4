"""Instances whose EBS volumes use a customer managed KMS key (PREPOST_KMS_KEY_ARNS).

EC2 starts such an instance only if the caller may create a grant on the key for it
(`kms:CreateGrant` with `kms:GrantIsForAWSResource`); without it the start fails and the
instance stays STUCK_STOPPED. moto enforces no IAM, so the run itself succeeds here: what
is checked is the policy coverage of the StartInstances calls the handlers made, with the
key moto recorded for each volume (`run_instances` BlockDeviceMappings keep `KmsKeyId`).
"""

from __future__ import annotations

from chalicelib.models.state import RunStatus
from prepost.local.cloud import AWS_MANAGED_EBS_KEY, Behaviour, LocalCloud
from tests import policy_coverage
from tests.conftest import VAULT, seed_input
from tests.functional.helpers import calls, outcome


def stop_start_run(cloud: LocalCloud, volume_key: str) -> str:
    [instance] = cloud.launch(1, tags={"backup-job": "true"}, volume_key=volume_key)
    run_id = cloud.run(seed_input())
    assert outcome(cloud, run_id)[0].status is RunStatus.SUCCEEDED
    [start] = calls(cloud, "ec2", "StartInstances")
    assert instance in str(start)
    return instance


def test_a_listed_key_lets_the_instance_start(cloud: LocalCloud) -> None:
    key = cloud.create_kms_key()
    cloud.configure_stage(PREPOST_KMS_KEY_ARNS=key)
    instance = stop_start_run(cloud, key)
    assert cloud.volume_keys(instance) == [key]  # moto kept the volume's key
    assert policy_coverage.check_cloud(cloud) == []


def test_an_unlisted_key_is_refused_to_start_instances(behaviour: Behaviour) -> None:
    with LocalCloud(behaviour=behaviour) as cloud:  # not the fixture: its check would fail
        cloud.create_vault(VAULT)
        key = cloud.create_kms_key()
        other = cloud.create_kms_key()
        cloud.configure_stage(PREPOST_KMS_KEY_ARNS=other)
        stop_start_run(cloud, key)
        refused = policy_coverage.check_cloud(cloud)
    [message] = refused
    assert message.startswith("start_instances: kms:CreateGrant on " + key)
    assert "kms:GrantIsForAWSResource" in message


def test_without_the_setting_no_grant_is_allowed(behaviour: Behaviour) -> None:
    with LocalCloud(behaviour=behaviour) as cloud:
        cloud.create_vault(VAULT)
        key = cloud.create_kms_key()
        stop_start_run(cloud, key)
        refused = policy_coverage.check_cloud(cloud)
    assert [m.split(" on ")[0] for m in refused] == ["start_instances: kms:CreateGrant"]


def test_the_aws_managed_key_needs_no_setting(cloud: LocalCloud) -> None:
    instance = stop_start_run(cloud, AWS_MANAGED_EBS_KEY)
    [volume] = cloud.ec2.describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance]}]
    )["Volumes"]
    assert volume["Encrypted"] is True
    assert volume["KmsKeyId"]  # EBS's default key, which moto creates as alias/aws/ebs
    assert cloud.volume_keys(instance) == []
    assert policy_coverage.check_cloud(cloud) == []
