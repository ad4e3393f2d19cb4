"""Scenarios: a simulated fleet, how it behaves, and what the run should end with.

A scenario is a JSON file in `events/scenarios/`; its format is this module's models.
Instances are chosen by index in the fleet (`"instances": [0, 2]`) or by share
(`"share": 0.1`, the first tenth of the fleet); indexes past the fleet are ignored, so a
scenario runs on a smaller fleet too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prepost.local import MAX_FLEET
from prepost.local.cloud import Behaviour, LocalCloud
from prepost.samples import EVENTS_DIR, load_event

SCENARIOS_DIR = EVENTS_DIR / "scenarios"


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

    def prepare(self, cloud: LocalCloud) -> list[str]:
        """Create the fleet and set its outcomes in `cloud`; the instance ids, in order."""
        detail = self.run_input()
        cloud.create_vault(detail["BackupDetails"]["BackupVaultName"])
        ids: list[str] = []
        values = next(iter(self.fleet.spread.items()), None)
        if values is None:
            ids = cloud.launch(self.fleet.count, tags=self.fleet.tags)
        else:
            key, labels = values
            for n, label in enumerate(labels):
                count = len(range(n, self.fleet.count, len(labels)))
                if count:
                    ids += cloud.launch(count, tags=self.fleet.tags | {key: label})
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
