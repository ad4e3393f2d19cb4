"""AWS Backup: on-demand backup jobs."""

from __future__ import annotations

from typing import Any

from chalicelib.gateways.aws import translated
from chalicelib.models.run_input import BackupDetails


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
