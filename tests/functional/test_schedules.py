"""Profiles and the scheduler, on the local cloud's virtual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from chalicelib.clock import iso
from chalicelib.logic.decisions import slot_run_id
from chalicelib.models.profile import Profile
from chalicelib.models.run_input import validation_messages
from chalicelib.models.state import RunRecord, RunStatus
from prepost.local.cloud import LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import completed_events

START = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)  # the virtual clock's start


def document(cron: str | None = "30 2 * * *", zone: str = "UTC", **schedule: Any) -> Any:
    doc: dict[str, Any] = {"Input": seed_input()}
    if cron is not None:
        doc["Schedule"] = {"Cron": cron, "TimeZone": zone, **schedule}
    return doc


def store(cloud: LocalCloud, name: str = "nightly", **options: Any) -> Profile:
    profile = Profile.from_document(name, document(**options), iso(cloud.clock.now()))
    cloud.store.put_profile(profile)
    return profile


def runs_of(cloud: LocalCloud, profile: str) -> list[RunRecord]:
    """Every run (and missed slot) of `profile`, by slot."""
    ids = {e["detail"]["run_id"] for e in cloud.emitted if "run_id" in e["detail"]}
    found = [cloud.store.get_run(run_id) for run_id in ids]
    runs = [run for run in found if run is not None and run.profile == profile]
    return sorted(runs, key=lambda run: run.slot or "")


def refusal(name: str, doc: Any) -> list[str]:
    with pytest.raises((ValidationError, ValueError)) as caught:
        Profile.from_document(name, doc, "2026-11-26T02:00:00Z")
    error = caught.value
    return validation_messages(error) if isinstance(error, ValidationError) else [str(error)]


def test_a_bad_profile_is_refused_with_the_field_named() -> None:
    no_backup = {"Input": {k: v for k, v in seed_input().items() if k != "BackupDetails"}}
    assert any(m.startswith("Input.BackupDetails") for m in refusal("p", no_backup))
    assert any(m.startswith("Schedule.Cron") for m in refusal("p", document("61 * * * *")))
    assert any(m.startswith("Schedule.Cron") for m in refusal("p", document("* * *")))
    bad_zone = document(zone="Mars/Olympus")
    assert any(m.startswith("Schedule.TimeZone") for m in refusal("p", bad_zone))
    assert any("Shedule" in m for m in refusal("p", {"Input": seed_input(), "Shedule": {}}))
    assert "profile name" in refusal("no spaces", document())[0]


def test_one_run_per_slot_over_a_day_and_a_bit(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    store(cloud)
    cloud.pass_time(26 * 3600)

    runs = runs_of(cloud, "nightly")
    assert [run.slot for run in runs] == ["2026-11-26T02:30:00Z", "2026-11-27T02:30:00Z"]
    assert all(run.status is RunStatus.SUCCEEDED for run in runs)
    assert [run.run_id for run in runs] == [
        slot_run_id("nightly", START + timedelta(minutes=30)),
        slot_run_id("nightly", START + timedelta(days=1, minutes=30)),
    ]
    assert cloud.invocations["start_scheduled_runs"] == 26 * 12


def test_duplicated_and_concurrent_ticks_start_one_run(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    store(cloud, cron="*/10 * * * *")
    cloud.clock.advance_to(START + timedelta(minutes=12))
    for _ in range(3):
        cloud.scheduler_tick()
    cloud.behaviour.copies = lambda e: 3  # and every start event delivered three times
    cloud.drain()

    [run] = runs_of(cloud, "nightly")
    assert run.slot == "2026-11-26T02:10:00Z"
    assert run.status is RunStatus.SUCCEEDED
    assert cloud.invocations["start_run_handler"] == 3


def test_a_slot_missed_within_the_window_is_caught_up_once(cloud: LocalCloud) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    store(cloud)
    cloud.clock.advance_to(START + timedelta(minutes=75))  # the scheduler was down 45 min
    cloud.scheduler_tick()
    cloud.scheduler_tick()
    cloud.drain()

    [run] = runs_of(cloud, "nightly")
    assert (run.slot, run.status) == ("2026-11-26T02:30:00Z", RunStatus.SUCCEEDED)


def test_a_slot_missed_beyond_the_window_is_recorded_not_run(cloud: LocalCloud) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    store(cloud, CatchUpMinutes=15)
    cloud.clock.advance_to(START + timedelta(hours=3))
    cloud.scheduler_tick()
    cloud.drain()

    [missed] = runs_of(cloud, "nightly")
    assert missed.status is RunStatus.MISSED
    assert missed.reason == "more than 15 minutes late"
    assert cloud.invocations["start_run_handler"] == 0
    [announced] = completed_events(cloud, missed.run_id)
    assert announced["status"] == "MISSED"


def test_a_profile_runs_at_most_once_per_tick(cloud: LocalCloud) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    store(cloud, cron="* * * * *")
    cloud.clock.advance_to(START + timedelta(minutes=5, seconds=30))
    cloud.scheduler_tick()
    cloud.drain()

    runs = runs_of(cloud, "nightly")
    assert [run.status for run in runs] == [RunStatus.MISSED] * 4 + [RunStatus.SUCCEEDED]
    assert runs[0].reason == "superseded by the later slot 2026-11-26T02:05:00Z in the same tick"


def test_a_start_event_may_name_a_profile(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    store(cloud, name="db", cron=None)
    run_id = cloud.run({"Profile": "db"})

    run = cloud.store.get_run(run_id)
    assert run is not None
    assert (run.status, run.profile, run.slot) == (RunStatus.SUCCEEDED, "db", None)
    assert run.instance_count == 2

    unknown = cloud.store.get_run(cloud.run({"Profile": "nope"}))
    assert unknown is not None
    assert unknown.status is RunStatus.REJECTED
    assert unknown.errors == ["Profile: no profile named 'nope'"]
    extra = cloud.store.get_run(cloud.run({"Profile": "db", "TargetEC2TagKey": "x"}))
    assert extra is not None
    assert extra.errors == ["TargetEC2TagKey: is not a known field (check its spelling)"]


@pytest.mark.parametrize("kind", ["dynamodb", "memory"])  # the two stores agree
def test_replacing_a_profile_restarts_its_schedule_and_keeps_its_creation(kind: str) -> None:
    with LocalCloud(store=kind) as cloud:
        first = store(cloud)
        cloud.clock.advance_to(START + timedelta(hours=1))
        again = Profile.from_document(
            "nightly", document("0 4 * * *"), iso(cloud.clock.now()), first
        )
        assert (again.created_at, again.updated_at) == (first.created_at, "2026-11-26T03:00:00Z")
        cloud.store.put_profile(again)
        assert cloud.store.get_profile("nightly") == again
        # A tick that read the old definition cannot move the new one's cursor.
        assert not cloud.store.advance_profile("nightly", first.updated_at, None, "x")
        assert cloud.store.advance_profile("nightly", again.updated_at, None, "2026-11-26T04:00Z")
        assert not cloud.store.advance_profile("nightly", again.updated_at, None, "y")
        assert cloud.store.advance_profile(
            "nightly", again.updated_at, "2026-11-26T04:00Z", "2026-11-27T04:00Z"
        )
        assert [p.name for p in cloud.store.list_profiles()] == ["nightly"]
        assert cloud.store.delete_profile("nightly")
        assert not cloud.store.delete_profile("nightly")
        assert cloud.store.list_profiles() == []


def test_a_forged_future_slot_is_refused_and_the_real_run_still_happens(
    cloud: LocalCloud,
) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    store(cloud)  # 30 2 * * * (UTC), stored at 02:00
    real_slot = START + timedelta(minutes=30)
    forged = cloud.run({"Profile": "nightly", "Slot": iso(real_slot)})  # 30 minutes early

    refused = cloud.store.get_run(forged)
    assert refused is not None
    assert refused.status is RunStatus.REJECTED
    assert refused.errors == [f"Slot: {iso(real_slot)} is in the future"]
    assert forged != slot_run_id("nightly", real_slot)  # it took no slot's run id
    assert cloud.store.get_run(slot_run_id("nightly", real_slot)) is None

    cloud.pass_time(3600)
    [run] = runs_of(cloud, "nightly")
    assert run.slot == iso(real_slot)
    assert run.status is RunStatus.SUCCEEDED


def test_a_due_slot_named_by_anyone_is_still_one_run(cloud: LocalCloud) -> None:
    cloud.launch(2, tags={"backup-job": "true"})
    store(cloud)
    cloud.clock.advance_to(START + timedelta(minutes=31))
    slot = iso(START + timedelta(minutes=30))
    cloud.run({"Profile": "nightly", "Slot": slot})
    cloud.run({"Profile": "nightly", "Slot": slot})  # the scheduler's own, or a replay
    [run] = runs_of(cloud, "nightly")
    assert run.run_id == slot_run_id("nightly", START + timedelta(minutes=30))
    assert run.status is RunStatus.SUCCEEDED
    completed = [e["detail"] for e in cloud.emitted if e["detail-type"].endswith("Completed")]
    assert [c["status"] for c in completed if "status" in c] == ["SUCCEEDED"]


def test_a_profile_that_fails_holds_up_no_other_and_is_tried_again(
    cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a-first", "b-second"):  # two fleets, so that neither run holds the other's
        cloud.launch(2, tags={"backup-job": name})
        doc = document()
        doc["Input"]["TargetEC2TagValue"] = name
        cloud.store.put_profile(Profile.from_document(name, doc, iso(cloud.clock.now())))
    cloud.behaviour.refuse_events = {"BackupSolution-PrePostScript": 1}  # a-first's, once
    cloud.clock.advance_to(START + timedelta(minutes=31))
    cloud.scheduler_tick()

    asked = [e["detail"]["Profile"] for e in cloud.emitted if "Profile" in e["detail"]]
    assert asked == ["b-second"]  # the same tick went on past the failing profile
    assert cloud.dead_letters == []  # contained: the tick itself did not fail
    assert '"ScheduleErrors":[1.0]' in capsys.readouterr().out

    cloud.scheduler_tick()  # the next tick: a-first's cursor had not moved
    cloud.drain()
    assert [run.status for run in runs_of(cloud, "a-first")] == [RunStatus.SUCCEEDED]
    assert [run.status for run in runs_of(cloud, "b-second")] == [RunStatus.SUCCEEDED]
