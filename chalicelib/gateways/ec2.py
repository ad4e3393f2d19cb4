"""EC2: resolve targets, stop and start instances."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import chunks, each_page, translated
from chalicelib.models.targets import TargetInstance

BATCH = 50
# The power calls: the client method and the response's list of instances.
_POWER_CALLS = {
    "StopInstances": ("stop_instances", "StoppingInstances"),
    "StartInstances": ("start_instances", "StartingInstances"),
}
# Given a refusal's error code, whether it blames one instance of the call.
Isolate = Callable[[str], bool]
# Ids or filter values per Describe call: AWS advises at most 1,000 ids a call and
# documents no limit per filter; 200 is the most this code puts in either.
DESCRIBE_BATCH = 200
# The tags that name, on an AMI AWS Backup made, the run and the instance it backs up
# (recovery point tags, which AWS Backup copies to the AMI: docs/aws-facts.md, "Capture").
RUN_TAG = "prepost:run-id"
INSTANCE_TAG = "prepost:instance-id"


@dataclass(frozen=True)
class Image:
    """An AMI: its state and the EBS snapshots its block device mappings list."""

    image_id: str
    state: str
    snapshot_ids: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    volume_id: str
    state: str  # pending | completed | error | recoverable | recovering
    start_time: datetime  # when the snapshot was initiated: the data it holds


def _always(code: str) -> bool:
    return True


class Ec2Gateway:
    def __init__(self, client: Any, partition: str, region: str, page_size: int = 500) -> None:
        self._client = client
        self.partition = partition
        self.region = region
        self._page_size = page_size

    def instances_by_ids(self, instance_ids: list[str]) -> list[TargetInstance]:
        """The instances among `instance_ids` that exist; unknown ids are simply absent."""
        found: list[TargetInstance] = []
        for batch in chunks(instance_ids, 200):
            found += self._describe([{"Name": "instance-id", "Values": batch}])
        return found

    def instances_by_tag(self, key: str, value: str) -> list[TargetInstance]:
        """Every instance of every reservation that carries the tag pair."""
        return self._describe([{"Name": f"tag:{key}", "Values": [value]}])

    def _describe(self, filters: list[dict[str, Any]]) -> list[TargetInstance]:
        found = []
        with translated("ec2:DescribeInstances"):
            for page in each_page(
                self._client,
                "describe_instances",
                Filters=filters,
                PaginationConfig={"PageSize": self._page_size},
            ):
                for reservation in page.get("Reservations", []):
                    for instance in reservation.get("Instances", []):
                        found.append(
                            TargetInstance(
                                instance_id=instance["InstanceId"],
                                state=instance["State"]["Name"],
                                owner_id=reservation["OwnerId"],
                                tags={t["Key"]: t["Value"] for t in instance.get("Tags", [])},
                            )
                        )
        return found

    def states(self, instance_ids: list[str]) -> dict[str, str]:
        """The EC2 state of each instance that still exists."""
        return {t.instance_id: t.state for t in self.instances_by_ids(instance_ids)}

    def volumes(self, instance_ids: list[str]) -> dict[str, list[str]]:
        """The EBS volumes attached to each instance now (DescribeVolumes by the
        `attachment.instance-id` filter), by instance id."""
        found: dict[str, list[str]] = {}
        with translated("ec2:DescribeVolumes"):
            for batch in chunks(instance_ids, DESCRIBE_BATCH):
                for page in each_page(
                    self._client, "describe_volumes",
                    Filters=[{"Name": "attachment.instance-id", "Values": batch}],
                    PaginationConfig={"PageSize": self._page_size},
                ):  # fmt: skip
                    for volume in page.get("Volumes", []):
                        for attachment in volume.get("Attachments", []):
                            if attachment.get("InstanceId") in batch:
                                found.setdefault(attachment["InstanceId"], []).append(
                                    volume["VolumeId"]
                                )
        return found

    def backup_images(self, run_id: str, instance_ids: list[str]) -> dict[str, list[Image]]:
        """The AMIs of this account tagged for `run_id` and each of `instance_ids` (those
        AWS Backup made of them), by instance id."""
        found: dict[str, list[Image]] = {}
        with translated("ec2:DescribeImages"):
            for batch in chunks(instance_ids, DESCRIBE_BATCH):
                filters = [
                    {"Name": f"tag:{RUN_TAG}", "Values": [run_id]},
                    {"Name": f"tag:{INSTANCE_TAG}", "Values": batch},
                ]
                for page in each_page(
                    self._client, "describe_images", Owners=["self"], Filters=filters,
                    PaginationConfig={"PageSize": 1000},
                ):  # fmt: skip
                    for image in page.get("Images", []):
                        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
                        snapshot_ids = tuple(
                            mapping["Ebs"]["SnapshotId"]
                            for mapping in image.get("BlockDeviceMappings", [])
                            if mapping.get("Ebs", {}).get("SnapshotId")
                        )
                        found.setdefault(tags.get(INSTANCE_TAG, ""), []).append(
                            Image(image["ImageId"], str(image.get("State")), snapshot_ids)
                        )
        return found

    def snapshots(self, snapshot_ids: list[str]) -> dict[str, Snapshot]:
        """The EBS snapshots among `snapshot_ids` that exist, by id."""
        found: dict[str, Snapshot] = {}
        for batch in chunks(snapshot_ids, DESCRIBE_BATCH):
            with translated("ec2:DescribeSnapshots"):
                # By filter, not SnapshotIds: an id that is gone (deleted meanwhile) is
                # simply absent, instead of failing the whole call.
                for page in each_page(
                    self._client, "describe_snapshots", OwnerIds=["self"],
                    Filters=[{"Name": "snapshot-id", "Values": batch}],
                    PaginationConfig={"PageSize": 1000},
                ):  # fmt: skip
                    for snapshot in page.get("Snapshots", []):
                        found[snapshot["SnapshotId"]] = Snapshot(
                            snapshot["SnapshotId"], snapshot.get("VolumeId", ""),
                            str(snapshot.get("State")), snapshot["StartTime"],
                        )  # fmt: skip
        return found

    def instance_arn(self, account: str, instance_id: str) -> str:
        return f"arn:{self.partition}:ec2:{self.region}:{account}:instance/{instance_id}"

    def stop(
        self, instance_ids: list[str], isolate: Isolate = _always
    ) -> dict[str, str | GatewayError]:
        """Stop instances; per instance, the state it is now in, or the error."""
        return self._change("StopInstances", instance_ids, isolate)

    def start(
        self, instance_ids: list[str], isolate: Isolate = _always
    ) -> dict[str, str | GatewayError]:
        """Start instances; per instance, the state it is now in, or the error."""
        return self._change("StartInstances", instance_ids, isolate)

    def _change(
        self, operation: str, instance_ids: list[str], isolate: Isolate
    ) -> dict[str, str | GatewayError]:
        """EC2 refuses a whole call for one bad instance. When the error blames one
        (`isolate(code)`), the call is made again one instance at a time so that it fails
        alone; when it blames the call (throttled, unavailable), every instance of the
        batch gets the error, and no single calls are made."""
        method, result_key = _POWER_CALLS[operation]
        call = getattr(self._client, method)
        outcome: dict[str, str | GatewayError] = {}
        for batch in chunks(instance_ids, BATCH):
            try:
                with translated(f"ec2:{operation}"):
                    response = call(InstanceIds=batch)
            except GatewayError as exc:
                if len(batch) == 1 or not isolate(exc.code):
                    outcome.update(dict.fromkeys(batch, exc))
                    continue
                for instance_id in batch:
                    try:
                        with translated(f"ec2:{operation}"):
                            response = call(InstanceIds=[instance_id])
                        outcome.update(_states(response, result_key))
                    except GatewayError as single:
                        outcome[instance_id] = single
            else:
                outcome.update(_states(response, result_key))
        return outcome


def _states(response: dict[str, Any], key: str) -> dict[str, str | GatewayError]:
    return {item["InstanceId"]: item["CurrentState"]["Name"] for item in response.get(key, [])}
