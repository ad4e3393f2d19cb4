"""Profiles: named run definitions, validated once when stored, optionally scheduled.

A profile document (what `prepost profile put NAME --file F` reads):

    {"Input": {...the start event's run input...},
     "Schedule": {"Cron": "30 2 * * *", "TimeZone": "Europe/Paris", "CatchUpMinutes": 60}}

`Schedule` is optional. `Cron` has the five fields of crontab(5) (minute, hour, day of
month, month, day of week) and is read in `TimeZone` (IANA), daylight-saving changes
included: a slot that does not exist that day runs at the first minute after the change,
a slot that happens twice runs once.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from chalicelib.models.run_input import RunInput

PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_CATCH_UP_MINUTES = 7 * 24 * 60


class Schedule(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True, frozen=True)

    cron: str = Field(alias="Cron")
    time_zone: str = Field(default="UTC", alias="TimeZone")
    # A slot missed by at most this much (the scheduler was down, say) is still run, once;
    # None: the deployment's PREPOST_SCHEDULE_CATCH_UP_MINUTES.
    catch_up_minutes: int | None = Field(
        default=None, alias="CatchUpMinutes", ge=0, le=MAX_CATCH_UP_MINUTES
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(
                f"{value!r} must have 5 fields: minute hour day-of-month month day-of-week"
            )
        try:
            CronSim(value, datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"{value!r} is not a valid cron expression: {exc}") from exc
        return value

    def slots_after(self, moment: datetime, until: datetime, limit: int) -> list[datetime]:
        """The slots in (moment, until], at most the last `limit` of them, in UTC."""
        zone = ZoneInfo(self.time_zone)
        found: list[datetime] = []
        for slot in CronSim(self.cron, moment.astimezone(zone)):
            if slot > until:
                break
            found.append(slot.astimezone(ZoneInfo("UTC")))
            if len(found) > limit:
                found.pop(0)
        return found

    def has_slot(self, moment: datetime) -> bool:
        """Whether `moment` is one of the schedule's slots (to the second)."""
        start = (moment - timedelta(minutes=1)).astimezone(ZoneInfo(self.time_zone))
        return next(iter(CronSim(self.cron, start))) == moment

    def next_slots(self, moment: datetime, count: int) -> list[datetime]:
        """The next `count` slots after `moment`, in the profile's time zone."""
        iterator = CronSim(self.cron, moment.astimezone(ZoneInfo(self.time_zone)))
        return [next(iterator) for _ in range(count)]


class ProfileRequest(BaseModel):
    """A start event's detail that names a stored profile instead of carrying the input;
    the scheduler adds the slot it starts the run for."""

    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    profile: str = Field(alias="Profile")
    slot: datetime | None = Field(default=None, alias="Slot")

    @field_validator("profile")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("slot")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry its time zone (e.g. 2026-11-26T02:30:00Z)")
        return value


class ProfileDocument(BaseModel):
    """What an operator writes."""

    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    input: RunInput = Field(alias="Input")
    schedule: Schedule | None = Field(default=None, alias="Schedule")


class Profile(BaseModel):
    """A stored profile."""

    name: str
    input_json: str  # the run input exactly as written (seed field names)
    schedule: Schedule | None = None
    created_at: str
    updated_at: str
    # The last slot the scheduler has dealt with (run or recorded missed); slots before
    # the profile was stored or rescheduled are never run.
    last_slot: str | None = None

    def run_input(self) -> dict[str, Any]:
        detail: dict[str, Any] = json.loads(self.input_json)
        return detail

    @classmethod
    def from_document(
        cls, name: str, document: Any, stored_at: str, previous: Profile | None = None
    ) -> Profile:
        """A profile from what an operator wrote, validated (a ValidationError names the
        field); replacing `previous` keeps its creation time and restarts its schedule."""
        check_name(name)
        parsed = ProfileDocument.model_validate(document)
        return cls(
            name=name,
            input_json=json.dumps(document["Input"]),
            schedule=parsed.schedule,
            created_at=previous.created_at if previous else stored_at,
            updated_at=stored_at,
        )


def check_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise ValueError(
            f"profile name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def catch_up(schedule: Schedule, default_minutes: int) -> timedelta:
    minutes = schedule.catch_up_minutes
    return timedelta(minutes=default_minutes if minutes is None else minutes)
