"""EC2: resolve targets, stop and start instances."""

from __future__ import annotations

from typing import Any

from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import chunks, each_page, translated
from chalicelib.models.targets import TargetInstance

BATCH = 50


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

    def instance_arn(self, account: str, instance_id: str) -> str:
        return f"arn:{self.partition}:ec2:{self.region}:{account}:instance/{instance_id}"

    def stop(self, instance_ids: list[str]) -> dict[str, str | GatewayError]:
        """Stop instances; per instance, the state it is now in, or the error."""
        return self._change(self._client.stop_instances, "StoppingInstances", instance_ids)

    def start(self, instance_ids: list[str]) -> dict[str, str | GatewayError]:
        """Start instances; per instance, the state it is now in, or the error."""
        return self._change(self._client.start_instances, "StartingInstances", instance_ids)

    def _change(
        self, call: Any, result_key: str, instance_ids: list[str]
    ) -> dict[str, str | GatewayError]:
        operation = f"ec2:{call.__name__}"
        outcome: dict[str, str | GatewayError] = {}
        for batch in chunks(instance_ids, BATCH):
            try:
                with translated(operation):
                    response = call(InstanceIds=batch)
            except GatewayError:
                # One bad instance fails the whole call: retry one by one so that it
                # fails alone.
                for instance_id in batch:
                    try:
                        with translated(operation):
                            response = call(InstanceIds=[instance_id])
                        outcome.update(_states(response, result_key))
                    except GatewayError as exc:
                        outcome[instance_id] = exc
            else:
                outcome.update(_states(response, result_key))
        return outcome


def _states(response: dict[str, Any], key: str) -> dict[str, str | GatewayError]:
    return {item["InstanceId"]: item["CurrentState"]["Name"] for item in response.get(key, [])}
