"""Settings, parsed once from the environment that each Chalice stage sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from functools import cache

from pydantic import BaseModel, Field

DEFAULT_OPT_IN_TAG_KEY = "prepost-backup:opt-in"
DEFAULT_OPT_IN_TAG_VALUE = "true"
# An SNS topic ARN in any partition, or empty (no notification).
SNS_TOPIC_ARN = r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256})?$"


class NotifyOn(StrEnum):
    """Which completed runs are announced on the notification topic."""

    FAILURES = "failures"  # every run that did not end SUCCEEDED
    ALWAYS = "always"


class Settings(BaseModel):
    """Deployment settings. Set per stage in `.chalice/config.json`."""

    table_name: str = Field(min_length=3)
    event_bus_name: str = "default"
    region: str = "us-east-1"
    record_retention_days: int = Field(default=90, ge=1)
    lease_margin_seconds: int = Field(default=3600, ge=0)
    # Allow lists: whatever a start event may name. Empty means nothing is allowed.
    allowed_script_sources: list[str] = Field(default_factory=list)  # URL/URI prefixes
    allowed_output_buckets: list[str] = Field(default_factory=list)
    allowed_backup_vaults: list[str] = Field(default_factory=list)
    allowed_backup_roles: list[str] = Field(default_factory=list)  # role ARNs
    # Exact command lines accepted besides what the command policy accepts (one per line).
    allowed_commands: list[str] = Field(default_factory=list)
    # A run that resolves to more targets is rejected.
    max_instances_per_run: int = Field(default=1000, ge=1)
    # The tag every target instance must carry; the IAM policies allow stop, start and
    # SendCommand only on instances that carry it.
    opt_in_tag_key: str = Field(default=DEFAULT_OPT_IN_TAG_KEY, min_length=1)
    opt_in_tag_value: str = DEFAULT_OPT_IN_TAG_VALUE
    # Where a summary of each completed run is published; empty: nowhere.
    notify_topic_arn: str = Field(default="", pattern=SNS_TOPIC_ARN)
    notify_on: NotifyOn = NotifyOn.FAILURES
    # A scheduled slot missed by at most this much is still run, once (a profile may say).
    schedule_catch_up_minutes: int = Field(default=60, ge=0)
    # A coordination group larger than this runs as parts of at most this many instances
    # (`decisions.parts_of`): what one handler invocation works on. 100 keeps every
    # invocation under a few hundred AWS calls; tests set it low to exercise the barrier.
    group_part_size: int = Field(default=100, ge=1, le=100)
    # A run of more groups than this counts them in tallies of about this many each
    # (`decisions.tallies_of`): the run header is written once per tally, not per group.
    # Tests set it low to exercise the tallies.
    tally_groups: int = Field(default=500, ge=1, le=1000)
    # The account's token buckets for the calls a large run makes many of (AWS's defaults,
    # docs/aws-facts.md "Rate limits a large run meets"); parts of a group enter STOP, START
    # and BACKUP paced to them (`logic/pacing.py`). Raise them if AWS raised yours.
    ec2_stop_burst: int = Field(default=1000, ge=1)  # instances
    ec2_stops_per_second: float = Field(default=20, gt=0)
    ec2_start_burst: int = Field(default=1000, ge=1)
    ec2_starts_per_second: float = Field(default=2, gt=0)
    backup_starts_per_second: float = Field(default=5, gt=0)  # StartBackupJob calls
    # The SQS queue of capture polls (`logic/capture.py`); empty: only the reconciler looks.
    capture_queue_url: str = ""


@cache
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    return settings_from(os.environ)


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings from a stage's environment variables (the packager checks a stage with
    it before deploying; ValueError if a value cannot be read)."""
    tag = env.get("PREPOST_OPT_IN_TAG") or f"{DEFAULT_OPT_IN_TAG_KEY}={DEFAULT_OPT_IN_TAG_VALUE}"
    tag_key, _, tag_value = tag.partition("=")
    return Settings(
        table_name=env.get("PREPOST_TABLE_NAME", ""),
        event_bus_name=env.get("PREPOST_EVENT_BUS_NAME", "default"),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        record_retention_days=int(env.get("PREPOST_RECORD_RETENTION_DAYS", "90")),
        lease_margin_seconds=int(env.get("PREPOST_LEASE_MARGIN_SECONDS", "3600")),
        allowed_script_sources=_listed(env.get("PREPOST_ALLOWED_SCRIPT_SOURCES")),
        allowed_output_buckets=_listed(env.get("PREPOST_ALLOWED_OUTPUT_BUCKETS")),
        allowed_backup_vaults=_listed(env.get("PREPOST_ALLOWED_BACKUP_VAULTS")),
        allowed_backup_roles=_listed(env.get("PREPOST_ALLOWED_BACKUP_ROLES")),
        allowed_commands=_lines(env.get("PREPOST_ALLOWED_COMMANDS")),
        max_instances_per_run=int(env.get("PREPOST_MAX_INSTANCES_PER_RUN") or 1000),
        opt_in_tag_key=tag_key.strip(),
        opt_in_tag_value=tag_value.strip(),
        notify_topic_arn=env.get("PREPOST_NOTIFY_TOPIC_ARN", "").strip(),
        notify_on=(env.get("PREPOST_NOTIFY_ON") or NotifyOn.FAILURES).strip().lower(),
        schedule_catch_up_minutes=int(env.get("PREPOST_SCHEDULE_CATCH_UP_MINUTES", "60")),
        group_part_size=int(env.get("PREPOST_GROUP_PART_SIZE") or 100),
        tally_groups=int(env.get("PREPOST_TALLY_GROUPS") or 500),
        ec2_stop_burst=int(env.get("PREPOST_EC2_STOP_BURST") or 1000),
        ec2_stops_per_second=float(env.get("PREPOST_EC2_STOPS_PER_SECOND") or 20),
        ec2_start_burst=int(env.get("PREPOST_EC2_START_BURST") or 1000),
        ec2_starts_per_second=float(env.get("PREPOST_EC2_STARTS_PER_SECOND") or 2),
        backup_starts_per_second=float(env.get("PREPOST_BACKUP_STARTS_PER_SECOND") or 5),
        capture_queue_url=env.get("PREPOST_CAPTURE_QUEUE_URL", "").strip(),
    )


def _listed(value: str | None) -> list[str]:
    """A comma-separated list; blanks ignored."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _lines(value: str | None) -> list[str]:
    """One item per line (command lines may hold commas); blank lines ignored."""
    return [line.strip() for line in (value or "").splitlines() if line.strip()]
