"""Cron slots in a time zone, across daylight-saving changes (pure, no AWS)."""

from __future__ import annotations

from datetime import UTC, datetime

from chalicelib.clock import iso
from chalicelib.models.profile import Schedule


def slots(cron: str, zone: str, since: str, until: str) -> list[str]:
    start = datetime.fromisoformat(since).replace(tzinfo=UTC)
    end = datetime.fromisoformat(until).replace(tzinfo=UTC)
    return [iso(s) for s in Schedule(Cron=cron, TimeZone=zone).slots_after(start, end, 100)]


def test_slots_are_read_in_the_profile_time_zone() -> None:
    # 02:30 in Paris is 01:30 UTC in winter.
    assert slots("30 2 * * *", "Europe/Paris", "2026-11-26T00:00", "2026-11-28T00:00") == [
        "2026-11-26T01:30:00Z", "2026-11-27T01:30:00Z",
    ]  # fmt: skip
    assert slots("0 22 * * 1-5", "America/New_York", "2026-11-27T00:00", "2026-12-01T06:00") == [
        # Thursday, Friday, (no weekend), Monday, each 22:00 EST
        "2026-11-27T03:00:00Z", "2026-11-28T03:00:00Z", "2026-12-01T03:00:00Z",
    ]  # fmt: skip


def test_a_slot_that_does_not_exist_runs_right_after_the_change() -> None:
    # 29 March 2026: Paris clocks go from 02:00 to 03:00; 02:30 never happens.
    assert slots("30 2 * * *", "Europe/Paris", "2026-03-28T00:00", "2026-03-31T00:00") == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST, the first minute after the change
        "2026-03-30T00:30:00Z",  # 02:30 CEST
    ]


def test_a_slot_that_happens_twice_runs_once() -> None:
    # 25 October 2026: Paris clocks go from 03:00 back to 02:00; 02:30 happens twice.
    assert slots("30 2 * * *", "Europe/Paris", "2026-10-24T12:00", "2026-10-26T12:00") == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST, the first time
        "2026-10-26T01:30:00Z",  # 02:30 CET
    ]


def test_the_next_slots_are_shown_in_the_profile_time_zone() -> None:
    schedule = Schedule(Cron="0 3 * * 0", TimeZone="Australia/Sydney")
    after = datetime(2026, 11, 26, tzinfo=UTC)
    shown = [s.isoformat() for s in schedule.next_slots(after, 3)]
    assert shown == [
        "2026-11-29T03:00:00+11:00", "2026-12-06T03:00:00+11:00", "2026-12-13T03:00:00+11:00",
    ]  # fmt: skip
