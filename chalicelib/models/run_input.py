"""The run input: the seed's input JSON, unchanged, plus additive optional fields.

Field names are the seed's PascalCase names (as aliases); errors name fields by them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from chalicelib.models.s3 import BUCKET, S3Location, S3LocationError

INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
# Partitions: aws, aws-cn, aws-us-gov, and the isolated ones (aws-iso, aws-iso-b, ...).
IAM_ROLE_ARN = re.compile(r"^arn:aws(?:-[a-z]+(?:-[a-z]+)*)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
BACKUP_VAULT_NAME = re.compile(r"^[a-zA-Z0-9\-_]{2,50}$")
GROUP_BY = re.compile(r"^(?:run|instance|tag:.{1,128})$")
MAX_TARGET_INSTANCES = 50
# AWS's limits, checked before anything happens (sources in docs/aws-facts.md).
MAX_WHOLE_NUMBER_DIGITS = 15  # every number here is far below 10**15
SSM_OUTPUT_KEY_PREFIX_MAX = 500  # SendCommand OutputS3KeyPrefix
# What the app appends to OutputS3KeyPrefix: "/<run id>/post_script" (40 characters).
OUTPUT_KEY_SUFFIX_MAX = 40
BACKUP_WINDOW_MINUTES_MAX = 52_560_000  # StartBackupJob: 100 years
LIFECYCLE_DAYS_MAX = 36_500  # StartBackupJob Lifecycle: 100 years
COLD_STORAGE_MIN_DAYS = 90  # DeleteAfterDays >= MoveToColdStorageAfterDays + 90
TAGS_PER_RESOURCE_MAX = 50  # tags on one resource (an EC2 recovery point is an AMI)
APP_RECOVERY_POINT_TAGS = 3  # prepost:run-id, prepost:instance-id and prepost:consistency
TAG_KEY_MAX, TAG_VALUE_MAX = 128, 256
TAG_KEY_PUNCTUATION = frozenset("_.:/=+-@ ")
ASCII_WHOLE_NUMBER = re.compile(rf"^-?[0-9]{{1,{MAX_WHOLE_NUMBER_DIGITS}}}$")
OUTPUT_BUCKET = re.compile(rf"^{BUCKET}$")
# An absolute path of plain characters: /opt/app, or C:\app on Windows.
POSIX_DIRECTORY = re.compile(r"^/(?:[A-Za-z0-9_.@+=,-]+/?)*$")
WINDOWS_DIRECTORY = re.compile(r"^[A-Za-z]:\\(?:[A-Za-z0-9_.@+=,-]+\\?)*$")


def _numeric_int(value: Any) -> Any:
    """Accept a whole number given as a JSON number or a numeric string; refuse booleans."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: str.isdigit() and int() also take other scripts' digits.
        if not ASCII_WHOLE_NUMBER.match(text):
            raise ValueError(f"must be a whole number in ASCII digits (got {value[:40]!r})")
        return int(text)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be a whole number (got {value!r})")
        return int(value)
    return value


def _flag(value: Any) -> Any:
    """A JSON boolean, or the strings "true"/"false" that templates sometimes produce."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"must be true or false (got {value!r})")


def _bounded_int(value: int) -> int:
    if abs(value) >= 10**MAX_WHOLE_NUMBER_DIGITS:
        raise ValueError(f"must have at most {MAX_WHOLE_NUMBER_DIGITS} digits")
    return value


WholeNumber = Annotated[int, BeforeValidator(_numeric_int), AfterValidator(_bounded_int)]
Flag = Annotated[bool, BeforeValidator(_flag)]


class OnPreScriptFailure(StrEnum):
    CONTINUE = "continue"
    ABORT = "abort"


class ReleaseAfter(StrEnum):
    """When a frozen or stopped instance is released (started, thawed) during its backup."""

    CAPTURE = "CAPTURE"  # once its snapshots are taken (docs/aws-facts.md, "Capture")
    BACKUP_COMPLETED = "BACKUP_COMPLETED"  # once its backup job completes (the seed's way)


# The longest a group may stay frozen waiting for its capture (script mode), in seconds.
MAX_FREEZE_SECONDS = 86_400


class _Input(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True, frozen=True)


class ScriptDetails(_Input):
    """How to run one script through `AWS-RunRemoteScript`. What `CommandToRun` may say
    depends on the deployment too: see `chalicelib.logic.policy`."""

    # The seed says "maximum length of 50", but its own example path is longer; the
    # example wins (README: deviations). 1024 is S3's limit on a key, plus the host.
    source_s3_path: str = Field(alias="SourceS3Path", min_length=1, max_length=2048)
    command_to_run: str = Field(alias="CommandToRun", min_length=1, max_length=4096)
    working_directory: str = Field(default="", alias="WorkingDirectory", max_length=4096)
    # Delivery timeout (SendCommand TimeoutSeconds): if the command has not started
    # running by then, it will not run. Omitted: SSM's own default applies.
    timeout_in_seconds: WholeNumber | None = Field(
        default=None, alias="TimeoutInSeconds", ge=30, le=2_592_000
    )
    # Additive: the script's execution timeout (AWS-RunRemoteScript executionTimeout,
    # whose allowed values are 1 to 28800). The seed hard-coded 3600 seconds.
    execution_timeout_in_seconds: WholeNumber = Field(
        default=3600, alias="ExecutionTimeoutInSeconds", ge=1, le=28_800
    )
    output_s3_bucket_name: str | None = Field(
        default=None, alias="OutputS3BucketName", min_length=3, max_length=63
    )
    output_s3_key_prefix: str | None = Field(
        default=None,
        alias="OutputS3KeyPrefix",
        min_length=1,
        max_length=SSM_OUTPUT_KEY_PREFIX_MAX - OUTPUT_KEY_SUFFIX_MAX,
    )

    @field_validator("source_s3_path")
    @classmethod
    def _source_is_s3(cls, value: str) -> str:
        try:
            S3Location.parse(value)
        except S3LocationError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @property
    def source(self) -> S3Location:
        """Where the script is downloaded from (checked when the input was read)."""
        return S3Location.parse(self.source_s3_path)

    @field_validator("working_directory")
    @classmethod
    def _absolute_plain_path(cls, value: str) -> str:
        if value and not (POSIX_DIRECTORY.match(value) or WINDOWS_DIRECTORY.match(value)):
            raise ValueError(
                "must be empty or an absolute path of letters, digits and _ . @ + = , - "
                "(/opt/app, or C:\\app on Windows)"
            )
        if value and any(part in (".", "..") for part in re.split(r"[/\\]", value)):
            raise ValueError("must not contain the dot segments '.' or '..'")
        return value

    @field_validator("output_s3_bucket_name")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not OUTPUT_BUCKET.match(value):
            raise ValueError("must be an S3 bucket name (3 to 63 a-z, 0-9, '.' and '-')")
        return value

    @field_validator("output_s3_key_prefix")
    @classmethod
    def _printable_prefix(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must hold no control characters")
        return value


class RemoteRunCommandDetails(_Input):
    pre_backup_script_details: ScriptDetails | None = Field(
        default=None, alias="PreBackupScriptDetails"
    )
    post_backup_script_details: ScriptDetails | None = Field(
        default=None, alias="PostBackupScriptDetails"
    )


class Lifecycle(_Input):
    move_to_cold_storage_after_days: WholeNumber | None = Field(
        default=None, alias="MoveToColdStorageAfterDays", ge=1, le=LIFECYCLE_DAYS_MAX
    )
    delete_after_days: WholeNumber | None = Field(
        default=None, alias="DeleteAfterDays", ge=1, le=LIFECYCLE_DAYS_MAX
    )
    opt_in_to_archive_for_supported_resources: Flag | None = Field(
        default=None, alias="OptInToArchiveForSupportedResources"
    )

    @model_validator(mode="after")
    def _cold_storage_minimum(self) -> Lifecycle:
        cold, delete = self.move_to_cold_storage_after_days, self.delete_after_days
        if cold is not None and delete is not None and delete < cold + COLD_STORAGE_MIN_DAYS:
            raise ValueError(
                f"DeleteAfterDays ({delete}) must be at least {COLD_STORAGE_MIN_DAYS} days "
                f"after MoveToColdStorageAfterDays ({cold}): AWS Backup keeps a recovery "
                f"point in cold storage for {COLD_STORAGE_MIN_DAYS} days at least"
            )
        return self


class BackupDetails(_Input):
    backup_vault_name: str = Field(alias="BackupVaultName", min_length=1, max_length=50)
    iam_role_arn: str = Field(alias="IamRoleArn", min_length=1, max_length=2048)
    # Additive, passed to StartBackupJob. Without a start window a job may wait hours.
    start_window_minutes: WholeNumber = Field(
        default=60, alias="StartWindowMinutes", ge=60, le=43_200
    )
    complete_window_minutes: WholeNumber | None = Field(
        default=None, alias="CompleteWindowMinutes", ge=60, le=BACKUP_WINDOW_MINUTES_MAX
    )
    lifecycle: Lifecycle | None = Field(default=None, alias="Lifecycle")
    recovery_point_tags: dict[str, str] = Field(
        default_factory=dict,
        alias="RecoveryPointTags",
        max_length=TAGS_PER_RESOURCE_MAX - APP_RECOVERY_POINT_TAGS,
    )
    backup_options: dict[str, str] = Field(default_factory=dict, alias="BackupOptions")

    @field_validator("backup_vault_name")
    @classmethod
    def _vault_name(cls, value: str) -> str:
        if not BACKUP_VAULT_NAME.match(value):
            raise ValueError("must be 2 to 50 letters, numbers, hyphens or underscores")
        return value

    @field_validator("iam_role_arn")
    @classmethod
    def _role_arn(cls, value: str) -> str:
        if not IAM_ROLE_ARN.match(value):
            raise ValueError(
                "must be an IAM role ARN such as arn:aws:iam::123456789012:role/BackupRole"
            )
        return value

    @field_validator("backup_options")
    @classmethod
    def _backup_options(cls, options: dict[str, str]) -> dict[str, str]:
        # AWS Backup knows one option for EC2: WindowsVSS, "enabled" or "disabled".
        unknown = sorted(set(options) - {"WindowsVSS"})
        if unknown:
            raise ValueError(f"unknown options {unknown}; the only one is WindowsVSS")
        if options and options["WindowsVSS"] not in ("enabled", "disabled"):
            raise ValueError("WindowsVSS must be 'enabled' or 'disabled'")
        return options

    @field_validator("recovery_point_tags")
    @classmethod
    def _tags_as_aws_takes_them(cls, tags: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in tags if k.lower().startswith(("aws:", "prepost:")))
        if reserved:
            raise ValueError(f"tag keys starting with aws: or prepost: are reserved: {reserved}")
        for key, value in tags.items():
            shown = repr(key[:40]) + ("..." if len(key) > 40 else "")
            if not 1 <= len(key) <= TAG_KEY_MAX:
                raise ValueError(f"tag key {shown} must be 1 to {TAG_KEY_MAX} characters")
            if not all(c.isalnum() or c in TAG_KEY_PUNCTUATION for c in key):
                raise ValueError(
                    f"tag key {shown} may hold only letters, digits, spaces and _ . : / = + - @"
                )
            if len(value) > TAG_VALUE_MAX:
                raise ValueError(f"the value of tag {shown} is over {TAG_VALUE_MAX} characters")
            if not value.isprintable():
                raise ValueError(f"the value of tag {shown} holds a control character")
        return tags


class RunInput(_Input):
    """One run: which instances, which scripts, whether to stop them, where to back up."""

    target_ec2_tag_key: str | None = Field(
        default=None, alias="TargetEC2TagKey", min_length=1, max_length=163
    )
    target_ec2_tag_value: str | None = Field(
        default=None, alias="TargetEC2TagValue", max_length=256
    )
    target_ec2_instances: list[str] | None = Field(
        default=None, alias="TargetEC2Instances", max_length=MAX_TARGET_INSTANCES
    )
    start_stop_ec2_required: Flag = Field(default=False, alias="StartStopEC2Required")
    remote_run_command_details: RemoteRunCommandDetails = Field(
        default_factory=RemoteRunCommandDetails, alias="RemoteRunCommandDetails"
    )
    backup_details: BackupDetails = Field(alias="BackupDetails")
    # Additive options.
    group_by: str = Field(default="run", alias="GroupBy")
    on_pre_script_failure: OnPreScriptFailure = Field(
        default=OnPreScriptFailure.CONTINUE, alias="OnPreScriptFailure"
    )
    release_after: ReleaseAfter = Field(default=ReleaseAfter.CAPTURE, alias="ReleaseAfter")
    max_freeze_seconds: WholeNumber = Field(
        default=300, alias="MaxFreezeSeconds", ge=30, le=MAX_FREEZE_SECONDS
    )

    @field_validator("target_ec2_instances")
    @classmethod
    def _instance_ids(cls, ids: list[str] | None) -> list[str] | None:
        if ids is None:
            return None
        bad = [i for i in ids if not INSTANCE_ID.match(i)]
        if bad:
            raise ValueError(f"not EC2 instance ids (i- and 8 or 17 hex digits): {bad[:5]}")
        return list(dict.fromkeys(ids))  # duplicates would be one instance anyway

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, value: str) -> str:
        if not GROUP_BY.match(value):
            raise ValueError("must be 'run', 'instance' or 'tag:<tag key>'")
        return value

    @model_validator(mode="after")
    def _exactly_one_target(self) -> RunInput:
        by_tag = self.target_ec2_tag_key is not None or self.target_ec2_tag_value is not None
        by_ids = bool(self.target_ec2_instances)
        if by_tag and by_ids:
            raise ValueError(
                "give either TargetEC2TagKey and TargetEC2TagValue, or TargetEC2Instances; not both"
            )
        if not by_tag and not by_ids:
            raise ValueError(
                "give either TargetEC2TagKey and TargetEC2TagValue, or TargetEC2Instances"
            )
        if by_tag and (self.target_ec2_tag_key is None or self.target_ec2_tag_value is None):
            raise ValueError("TargetEC2TagKey and TargetEC2TagValue must be given together")
        return self

    @property
    def pre_script(self) -> ScriptDetails | None:
        return self.remote_run_command_details.pre_backup_script_details

    @property
    def post_script(self) -> ScriptDetails | None:
        return self.remote_run_command_details.post_backup_script_details

    @property
    def group_tag_key(self) -> str | None:
        return self.group_by[4:] if self.group_by.startswith("tag:") else None


def validation_messages(error: ValidationError) -> list[str]:
    """Every validation error as one sentence that names the field as the user wrote it."""
    messages = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field (check its spelling)"
        messages.append(f"{location}: {message}" if location else message)
    return messages
