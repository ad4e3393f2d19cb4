"""AWS Backup: on-demand backup jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib.gateways.aws import translated
from chalicelib.models.run_input import BackupDetails


@dataclass(frozen=True)
class BackupJob:
    state: str
    status_message: str | None
    recovery_point_arn: str | None


class BackupGateway:
    def __init__(self, client: Any) -> None:
        self._client = client

    def start_backup_job(
        self,
        resource_arn: str,
        details: BackupDetails,
        idempotency_token: str,
        tags: dict[str, str],
    ) -> str:
        """Start a backup of one resource; the backup job id."""
        request: dict[str, Any] = {
            "BackupVaultName": details.backup_vault_name,
            "ResourceArn": resource_arn,
            "IamRoleArn": details.iam_role_arn,
            "IdempotencyToken": idempotency_token,
            "StartWindowMinutes": details.start_window_minutes,
            "RecoveryPointTags": tags,
        }
        if details.complete_window_minutes is not None:
            request["CompleteWindowMinutes"] = details.complete_window_minutes
        if details.lifecycle is not None:
            request["Lifecycle"] = details.lifecycle.model_dump(by_alias=True, exclude_none=True)
        if details.backup_options:
            request["BackupOptions"] = details.backup_options
        with translated("backup:StartBackupJob"):
            response = self._client.start_backup_job(**request)
        return str(response["BackupJobId"])

    def describe_job(self, backup_job_id: str) -> BackupJob:
        """What AWS Backup says of a job now."""
        with translated("backup:DescribeBackupJob"):
            response = self._client.describe_backup_job(BackupJobId=backup_job_id)
        return BackupJob(
            state=str(response["State"]),
            status_message=response.get("StatusMessage"),
            recovery_point_arn=response.get("RecoveryPointArn"),
        )
