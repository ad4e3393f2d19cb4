"""EC2: resolve targets, stop and start instances."""

from __future__ import annotations

from collections.abc import Callable
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
