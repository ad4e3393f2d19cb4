"""Scenarios: a simulated fleet, how it behaves, and what the run should end with.

A scenario is a JSON file in `events/scenarios/`; its format is this module's models.
Instances are chosen by index in the fleet (`"instances": [0, 2]`) or by share
(`"share": 0.1`, the first tenth of the fleet); indexes past the fleet are ignored, so a
scenario runs on a smaller fleet too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.models.run_input import (
    BACKUP_VAULT_NAME,
    IAM_ROLE_ARN,
    INSTANCE_ID,
    OUTPUT_BUCKET,
)
from chalicelib.models.s3 import S3Location, S3LocationError
from prepost.local import MAX_FLEET
from prepost.local.cloud import ACCOUNT, Behaviour, LocalCloud
from prepost.samples import EVENTS_DIR, load_event

SCENARIOS_DIR = EVENTS_DIR / "scenarios"
INPUTS_DIR = EVENTS_DIR / "inputs"
SCRIPTS = ("PreBackupScriptDetails", "PostBackupScriptDetails")
# What an EC2 tag may hold (EC2 refuses longer keys and values when tagging).
EC2_TAG_KEY_MAX, EC2_TAG_VALUE_MAX = 128, 256


def _field(value: Any, *path: str) -> Any:
    """`value[path[0]][path[1]]...`, or None where a level is missing or not an object."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class InputResources:
    """What a run input names in the account, read leniently: only well-formed values are
    kept (the start handler refuses the rest of the input, with its reasons)."""

    vaults: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # IAM role ARNs
    output_buckets: list[str] = field(default_factory=list)
    scripts: list[S3Location] = field(default_factory=list)
    target_tag: tuple[str, str] | None = None  # TargetEC2TagKey, TargetEC2TagValue
    target_ids: list[str] = field(default_factory=list)  # TargetEC2Instances
    notes: list[str] = field(default_factory=list)  # what could not be provisioned as named

    @classmethod
    def of(cls, detail: Any) -> InputResources:
        """The resources `detail` (any JSON value) names."""
        notes = []
        scripts, buckets = [], []
        for name in SCRIPTS:
            script = _field(detail, "RemoteRunCommandDetails", name)
            source = _field(script, "SourceS3Path")
            if isinstance(source, str):
                with contextlib.suppress(S3LocationError):  # the app refuses it, saying why
                    scripts.append(S3Location.parse(source))
            bucket = _field(script, "OutputS3BucketName")
            if isinstance(bucket, str) and OUTPUT_BUCKET.match(bucket):
                buckets.append(bucket)
        vault = _field(detail, "BackupDetails", "BackupVaultName")
        role = _field(detail, "BackupDetails", "IamRoleArn")
        roles = [role] if isinstance(role, str) and IAM_ROLE_ARN.match(role) else []
        for arn in roles:
            account = arn.split(":")[4]
            if account != ACCOUNT:
                notes.append(
                    f"BackupDetails.IamRoleArn names account {account}; local mode has one "
                    f"account, {ACCOUNT}: the role was created there under the same name, "
                    "and the run passes the ARN as written"
                )
        key, value = _field(detail, "TargetEC2TagKey"), _field(detail, "TargetEC2TagValue")
        tag = None
        if isinstance(key, str) and isinstance(value, str):
            if _taggable(key, value):
                tag = (key, value)
            else:
                notes.append(
                    "no EC2 instance can carry the tag TargetEC2TagKey and TargetEC2TagValue "
                    f"name (keys 1 to {EC2_TAG_KEY_MAX} characters, values up to "
                    f"{EC2_TAG_VALUE_MAX}, printable): the fleet was launched with the "
                    "scenario's own tags"
                )
        listed = _field(detail, "TargetEC2Instances")
        listed = listed if isinstance(listed, list) else []
        ids = [i for i in listed if isinstance(i, str) and INSTANCE_ID.match(i)]
        return cls(
            vaults=[vault] if isinstance(vault, str) and BACKUP_VAULT_NAME.match(vault) else [],
            roles=roles,
            output_buckets=_unique(buckets),
            scripts=list(dict.fromkeys(scripts)),
            target_tag=tag,
            target_ids=_unique(ids)[:MAX_FLEET],
            notes=notes,
        )

    @property
    def script_sources(self) -> list[str]:
        """The allow-list prefixes of the scripts: each one's directory, as an s3:// URI."""
        return _unique([directory_of(script) for script in self.scripts])

    @property
    def buckets(self) -> list[str]:
        """The buckets named: for script output, and those the scripts are stored in."""
        return _unique(self.output_buckets + [script.bucket for script in self.scripts])

    def provision(self, cloud: LocalCloud) -> None:
        """Create the vaults, buckets and roles in `cloud`. The scripts themselves are not
        stored: local mode's SSM emulation never downloads them (an invocation's outcome
        is the scenario's), and the app does not read S3."""
        for vault in self.vaults:
            cloud.create_vault(vault)
        for bucket in self.buckets:
            cloud.create_bucket(bucket)
        for arn in self.roles:
            path, _, name = arn.split(":", 5)[5].removeprefix("role").rpartition("/")
            cloud.create_backup_role(name, path + "/")

    def summary(self) -> dict[str, Any]:
        """What `provision` creates, and what it could not create as named."""
        return {
            "backup_vaults": self.vaults,
            "buckets": self.buckets,
            "iam_roles": self.roles,
            "notes": self.notes,
        }


def directory_of(script: S3Location) -> str:
    """The prefix that allows `script` and its siblings: `s3://bucket/dir/`."""
    directory = script.key.rpartition("/")[0]
    return f"s3://{script.bucket}/{directory}/" if directory else f"s3://{script.bucket}/"


def _taggable(key: str, value: str) -> bool:
    return (
        1 <= len(key) <= EC2_TAG_KEY_MAX
        and len(value) <= EC2_TAG_VALUE_MAX
        and key.isprintable()
        and value.isprintable()
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Selection(_Spec):
    instances: list[int] = Field(default_factory=list)
    share: float = Field(default=0.0, ge=0, le=1)

    def pick(self, ids: list[str]) -> list[str]:
        chosen = {ids[n] for n in self.instances if n < len(ids)}
        chosen |= set(ids[: round(self.share * len(ids))])
        return [i for i in ids if i in chosen]


class ScriptOutcome(Selection):
    phase: Literal["PRE_SCRIPT", "POST_SCRIPT"]
    status: str = "Success"  # an SSM status, or "Hang": it never ends
    seconds: float | None = None  # how long these instances' scripts take


class BackupOutcome(Selection):
    state: Literal["FAILED", "ABORTED", "EXPIRED", "PARTIAL", "RUNNING"]


class CaptureBehaviour(Selection):
    """How these instances' backup jobs capture their data (release at capture)."""

    never_runs: bool = False  # the job stays CREATED, then expires at its start window
    snapshot_fails: bool = False  # one snapshot of its AMI fails: the job ends FAILED
    volume_attached_after_freeze: bool = False  # a volume attached once the job is created
    vss_fails: bool = False  # asked for Windows VSS, the job takes a regular backup


class ApiError(Selection):
    operation: Literal["StopInstances", "StartInstances", "SendCommand", "StartBackupJob"]
    code: str
    times: int | None = None  # StartBackupJob only: refused this many times, then accepted


class Fleet(_Spec):
    count: int = Field(default=3, ge=1, le=MAX_FLEET)
    tags: dict[str, str] = Field(default_factory=lambda: {"backup-job": "true"})
    # One more tag whose values are dealt round-robin (consistency groups): {"cluster": [..]}
    spread: dict[str, list[str]] = Field(default_factory=dict)
    stopped: int = Field(default=0, ge=0)  # the first N instances are stopped before the run


class Delivery(_Spec):
    lose_sources: list[str] = Field(default_factory=list)  # e.g. ["aws.backup"]
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)  # never the start event
    delay_rate: float = Field(default=0.0, ge=0, le=1)
    max_delay_seconds: float = 900
    crash_after: dict[str, int] = Field(default_factory=dict)


class ScheduleSpec(_Spec):
    """Store the scenario's input as a scheduled profile and let virtual time pass."""

    profile: str = "scheduled"
    cron: str
    time_zone: str = "UTC"
    catch_up_minutes: int | None = None
    hours: float = Field(gt=0, le=24 * 31)  # virtual time the scheduler runs for

    def document(self, run_input: dict[str, Any]) -> dict[str, Any]:
        schedule: dict[str, Any] = {"Cron": self.cron, "TimeZone": self.time_zone}
        if self.catch_up_minutes is not None:
            schedule["CatchUpMinutes"] = self.catch_up_minutes
        return {"Input": run_input, "Schedule": schedule}


class Expect(_Spec):
    run: str
    instances: dict[str, str] = Field(default_factory=dict)  # index -> status; "*" others


class Scenario(_Spec):
    description: str
    input: str | dict[str, Any] = "start-seed-example"  # a sample event's name, or the input
    input_changes: dict[str, Any] = Field(default_factory=dict)  # merged into the input
    fleet: Fleet = Field(default_factory=Fleet)
    durations: dict[str, float] = Field(default_factory=dict)  # Behaviour's *_seconds
    scripts: list[ScriptOutcome] = Field(default_factory=list)
    backups: list[BackupOutcome] = Field(default_factory=list)
    captures: list[CaptureBehaviour] = Field(default_factory=list)
    api_errors: list[ApiError] = Field(default_factory=list)
    delivery: Delivery = Field(default_factory=Delivery)
    schedule: ScheduleSpec | None = None  # run as a scheduled profile, over virtual hours
    expect: Expect | None = None

    @classmethod
    def load(cls, name_or_path: str) -> Scenario:
        path = Path(name_or_path)
        if not path.exists():
            path = SCENARIOS_DIR / f"{name_or_path.removesuffix('.json')}.json"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.json")))
            raise FileNotFoundError(f"no scenario {name_or_path!r}; known: {known}")
        return cls.model_validate(json.loads(path.read_text()))

    def run_input(self) -> dict[str, Any]:
        base = load_event(self.input)["detail"] if isinstance(self.input, str) else self.input
        return {**base, **self.input_changes}

    def behaviour(self, seed: int = 0) -> Behaviour:
        delivery = self.delivery

        def chance(event: dict[str, Any], what: str) -> float:
            digest = hashlib.sha256(f"{seed}/{event['id']}/{what}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64

        def lose(event: dict[str, Any]) -> bool:
            if event["detail-type"] == "BackupSolution-PrePostScript":
                return False
            return event["source"] in delivery.lose_sources or (
                chance(event, "drop") < delivery.drop_rate
            )

        seconds: dict[str, Any] = {
            k: v for k, v in self.durations.items() if k.endswith("_seconds")
        }
        return Behaviour(
            **seconds,
            lose_event=lose,
            copies=lambda e: 2 if chance(e, "dup") < delivery.duplicate_rate else 1,
            delay=lambda e: (
                chance(e, "by") * delivery.max_delay_seconds
                if chance(e, "late") < delivery.delay_rate
                else 0
            ),
            crash_after=dict(delivery.crash_after),
        )

    def prepare(self, cloud: LocalCloud, run_input: Any = None) -> list[str]:
        """Create what the input names and the fleet, and set its outcomes in `cloud`;
        the instance ids, in order.

        The input is the scenario's own, or `run_input` (any JSON value). With
        `run_input`, the fleet carries the tag the input targets (TargetEC2TagKey and
        TargetEC2TagValue) instead of the scenario's fleet tags, or, when the input lists
        TargetEC2Instances, is exactly those instances, with those ids."""
        detail = self.run_input() if run_input is None else run_input
        resources = InputResources.of(detail)
        resources.provision(cloud)
        tags = self.fleet.tags
        if run_input is not None and resources.target_tag is not None:
            target_key, target_value = resources.target_tag
            tags = {target_key: target_value}
        wanted = resources.target_ids if run_input is not None else []
        count = len(wanted) or self.fleet.count
        ids: list[str] = []
        values = next(iter(self.fleet.spread.items()), None)
        if values is None:
            ids = cloud.launch(count, tags=tags, ids=wanted or None)
        else:
            key, labels = values
            for n, label in enumerate(labels):
                share = len(range(n, count, len(labels)))
                chosen = wanted[len(ids) : len(ids) + share] or None
                if share:
                    ids += cloud.launch(share, tags=tags | {key: label}, ids=chosen)
        if self.fleet.stopped:
            cloud.ec2.stop_instances(InstanceIds=ids[: self.fleet.stopped])
        behaviour = cloud.behaviour
        for script in self.scripts:
            for instance_id in script.pick(ids):
                behaviour.script_status[(instance_id, script.phase)] = script.status
                if script.seconds is not None:
                    behaviour.script_seconds_by_instance[instance_id] = script.seconds
        for backup in self.backups:
            for instance_id in backup.pick(ids):
                behaviour.backup_state[instance_id] = backup.state
        for capture in self.captures:
            for instance_id in capture.pick(ids):
                for knob in ("never_runs", "snapshot_fails", "volume_attached_after_freeze",
                             "vss_fails"):  # fmt: skip
                    if getattr(capture, knob):
                        getattr(behaviour, knob if knob != "never_runs" else "backup_never_runs"
                                ).add(instance_id)  # fmt: skip
        for error in self.api_errors:
            for instance_id in error.pick(ids):
                if error.operation == "SendCommand":
                    behaviour.send_command_errors[instance_id] = error.code
                elif error.operation == "StartBackupJob":
                    cloud.backup.refuse[instance_id] = [error.code] * (error.times or 1000)
                else:
                    behaviour.power_errors[(instance_id, error.operation)] = error.code
        return ids

    def expected(self, ids: list[str]) -> dict[str, str]:
        """The expected final status of each instance, when the scenario says."""
        if self.expect is None:
            return {}
        default = self.expect.instances.get("*")
        return {
            instance_id: self.expect.instances.get(str(n), default or "")
            for n, instance_id in enumerate(ids)
            if str(n) in self.expect.instances or default
        }

    def misses(self, ids: list[str], report: dict[str, Any]) -> list[str]:
        """Where the run's `report` differs from what the scenario expects of the fleet
        `ids`, one sentence each (none when the scenario expects nothing)."""
        if self.expect is None:
            return []
        found = []
        if report.get("status") != self.expect.run:
            found.append(f"run: expected {self.expect.run}, got {report.get('status')}")
        statuses = {i["instance_id"]: i["status"] for i in report.get("instances", [])}
        index = {instance_id: n for n, instance_id in enumerate(ids)}
        for instance_id, expected in self.expected(ids).items():
            got = statuses.get(instance_id)
            if got != expected:
                found.append(
                    f"{instance_id} (index {index[instance_id]}): expected {expected}, "
                    f"got {got or 'no record (not in the run)'}"
                )
        return found
