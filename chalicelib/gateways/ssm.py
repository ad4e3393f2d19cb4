"""SSM Run Command: scripts through AWS-RunRemoteScript."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import each_page, translated
from chalicelib.models.script_command import RemoteScript

DOCUMENT = "AWS-RunRemoteScript"
MAX_INSTANCES_PER_COMMAND = 50
ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class SentCommand:
    """A command as SSM lists it: what a handler that died before recording it left."""

    command_id: str
    comment: str
    instance_ids: tuple[str, ...]  # every instance it was sent to

    @classmethod
    def listed(cls, command: dict[str, Any]) -> SentCommand:
        return cls(
            command_id=str(command["CommandId"]),
            comment=str(command.get("Comment", "")),
            instance_ids=tuple(command.get("InstanceIds", [])),
        )


class SsmGateway:
    def __init__(self, client: Any) -> None:
        self._client = client

    def send_script(self, instance_ids: list[str], script: RemoteScript, comment: str) -> str:
        """Send `script` to at most 50 instances by id; the command id."""
        if not 0 < len(instance_ids) <= MAX_INSTANCES_PER_COMMAND:
            raise ValueError(f"1 to 50 instance ids per command, got {len(instance_ids)}")
        request: dict[str, Any] = {
            "InstanceIds": instance_ids,
            "DocumentName": DOCUMENT,
            "Comment": comment[:100],
            "Parameters": {
                "sourceType": ["S3"],
                "sourceInfo": [json.dumps({"path": script.source_s3_path})],
                "commandLine": [script.command_line],
                "workingDirectory": [script.working_directory],
                "executionTimeout": [str(script.execution_timeout_seconds)],
            },
        }
        if script.delivery_timeout_seconds is not None:
            request["TimeoutSeconds"] = script.delivery_timeout_seconds
        if script.output_bucket:
            request["OutputS3BucketName"] = script.output_bucket
            request["OutputS3KeyPrefix"] = script.output_prefix
        with translated("ssm:SendCommand"):
            response = self._client.send_command(**request)
        return str(response["Command"]["CommandId"])

    def invocations(self, command_id: str) -> dict[str, tuple[str, str]]:
        """(Status, StatusDetails) of every invocation of a command, by instance id (a
        command names at most 50 instances: one page)."""
        found: dict[str, tuple[str, str]] = {}
        with translated("ssm:ListCommandInvocations"):
            for page in each_page(self._client, "list_command_invocations", CommandId=command_id):
                for invocation in page.get("CommandInvocations", []):
                    found[str(invocation["InstanceId"])] = (
                        str(invocation["Status"]),
                        str(invocation.get("StatusDetails") or ""),
                    )
        return found

    def find_command(
        self, instance_id: str, comment: str, sent_after: datetime
    ) -> SentCommand | None:
        """A command with this comment already sent to the instance, if any.

        A handler that died between SendCommand and recording its id finds it again here
        instead of sending the script a second time.
        """
        with translated("ssm:ListCommands"):
            for page in each_page(
                self._client,
                "list_commands",
                InstanceId=instance_id,
                Filters=[{"key": "InvokedAfter", "value": sent_after.strftime(ISO_SECONDS)}],
            ):
                for command in page.get("Commands", []):
                    if command.get("Comment") == comment[:100]:
                        return SentCommand.listed(command)
        return None

    def command(self, command_id: str) -> SentCommand | None:
        """The command as SSM lists it (its comment, its instances); None if SSM does not
        know it (yet)."""
        try:
            with translated("ssm:ListCommands"):
                commands = self._client.list_commands(CommandId=command_id).get("Commands", [])
        except GatewayError as exc:
            if exc.code == "InvalidCommandId":
                return None
            raise
        return SentCommand.listed(commands[0]) if commands else None
