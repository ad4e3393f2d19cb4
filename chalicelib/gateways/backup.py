"""AWS Backup: on-demand backup jobs, and the labels of what they produce."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.gateways.aws import each_page, translated
from chalicelib.models.run_input import BackupDetails

# A job in one of these states does not change any more (botocore's BackupJobState; see
# docs/aws-facts.md, "Stopping and relabelling backup jobs").
TERMINAL_JOB_STATES = frozenset({"COMPLETED", "FAILED", "ABORTED", "EXPIRED", "PARTIAL"})
CONSISTENCY_TAG = "prepost:consistency"
LIST_PAGE_SIZE = 1000  # ListBackupJobs' MaxResults: 1 to 1000


@dataclass(frozen=True)
class BackupJob:
    state: str
    status_message: str | None
    recovery_point_arn: str | None
    # "WindowsVSS" when a Windows VSS backup was taken; empty or absent: a regular one.
    backup_type: str | None = None

    @classmethod
    def of(cls, job: dict[str, Any]) -> BackupJob:
        """From DescribeBackupJob's answer, or one job of ListBackupJobs'."""
        return cls(
            state=str(job["State"]),
            status_message=job.get("StatusMessage"),
            recovery_point_arn=job.get("RecoveryPointArn"),
            backup_type=job.get("BackupType") or None,
        )


class BackupGateway:
    """AWS Backup's jobs; `ec2` (an EC2 client) relabels the AMI an EC2 backup produces,
    since AWS Backup's TagResource refuses `arn:aws:ec2:` recovery point ARNs."""

    def __init__(self, client: Any, ec2: Any = None) -> None:
        self._client = client
        self._ec2 = ec2

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
        return BackupJob.of(response)

    def stop_job(self, backup_job_id: str) -> None:
        """Ask AWS Backup to stop a job (it goes ABORTING, then ABORTED)."""
        with translated("backup:StopBackupJob"):
            self._client.stop_backup_job(BackupJobId=backup_job_id)

    def find_job(self, resource_arn: str, vault: str, created_after: datetime) -> str | None:
        """The id of the latest job backing up `resource_arn` into `vault` created after
        `created_after` (a job started by a handler that died before recording it)."""
        found = self._listed(
            ByResourceArn=resource_arn, ByBackupVaultName=vault, ByCreatedAfter=created_after
        )
        if not found:
            return None
        latest = max(found, key=lambda job: job["CreationDate"])
        return str(latest["BackupJobId"])

    def running_jobs(self, vault: str, created_after: datetime) -> dict[str, BackupJob]:
        """The RUNNING EC2 jobs into `vault` created after `created_after`, by id."""
        found = self._listed(
            ByBackupVaultName=vault, ByCreatedAfter=created_after, ByState="RUNNING",
            ByResourceType="EC2",
        )  # fmt: skip
        return {str(job["BackupJobId"]): BackupJob.of(job) for job in found}

    def jobs_created_after(self, vault: str, created_after: datetime) -> dict[str, BackupJob]:
        """Every job into `vault` created after `created_after` (AWS lists 30 days), by
        id, a thousand per call."""
        found = self._listed(ByBackupVaultName=vault, ByCreatedAfter=created_after)
        return {str(job["BackupJobId"]): BackupJob.of(job) for job in found}

    def _listed(self, **filters: Any) -> list[dict[str, Any]]:
        """ListBackupJobs with these filters, every page (a thousand jobs each)."""
        found: list[dict[str, Any]] = []
        with translated("backup:ListBackupJobs"):
            for page in each_page(
                self._client,
                "list_backup_jobs",
                PaginationConfig={"PageSize": LIST_PAGE_SIZE},
                **filters,
            ):
                found += page.get("BackupJobs", [])
        return found

    def relabel(self, recovery_point_arn: str, consistency: str) -> None:
        """Overwrite the consistency tag of an EC2 recovery point (an AMI:
        `arn:aws:ec2:<region>::image/ami-...`); CreateTags overwrites a key's value."""
        image_id = recovery_point_arn.rsplit("/", 1)[-1]
        with translated("ec2:CreateTags"):
            self._ec2.create_tags(
                Resources=[image_id], Tags=[{"Key": CONSISTENCY_TAG, "Value": consistency}]
            )
