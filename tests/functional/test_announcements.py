"""Every run that ends is announced at least once (`PrePostBackup Run Completed`), whatever
path ended it: finished, rejected, or a scheduled slot that was missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.clock import iso
from chalicelib.models.events import RunCompleted
from chalicelib.models.profile import Profile
from chalicelib.models.state import RunStatus
from prepost.local.cloud import LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import completed_events

RUN_COMPLETED = "PrePostBackup Run Completed"
START = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)  # the virtual clock's start


@pytest.mark.parametrize("refusals", [1, 3])
def test_a_rejected_run_is_announced_even_when_eventbridge_refuses_it(
    cloud: LocalCloud, refusals: int
) -> None:
    cloud.behaviour.refuse_events = {RUN_COMPLETED: refusals}
    run_id = cloud.run({"TargetEC2TagKey": "backup-job"})  # no BackupDetails: rejected

    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.REJECTED
    assert cloud.behaviour.refuse_events[RUN_COMPLETED] == 0  # every refusal happened
    [announced] = completed_events(cloud, run_id)  # once, once it went through
    assert announced["status"] == "REJECTED"
    assert announced["errors"] == run.errors
    assert run.announced_at is not None
    assert cloud.store.due_items(int(cloud.clock.now().timestamp()) + 10**6) == []


@pytest.mark.parametrize("refusals", [1, 3])
def test_a_missed_slot_is_announced_even_when_eventbridge_refuses_it(
    cloud: LocalCloud, refusals: int
) -> None:
    document = {"Input": seed_input(), "Schedule": {"Cron": "30 2 * * *", "CatchUpMinutes": 15}}
    cloud.store.put_profile(Profile.from_document("nightly", document, iso(START)))
    cloud.behaviour.refuse_events = {RUN_COMPLETED: refusals}
    cloud.clock.advance_to(START + timedelta(hours=3))  # the slot is 2.5 hours late
    cloud.pass_time(3600)

    missed = [e["detail"] for e in cloud.emitted if e["detail-type"] == RUN_COMPLETED]
    assert [(m["status"], m["profile"], m["slot"]) for m in missed] == [
        ("MISSED", "nightly", "2026-11-26T02:30:00Z")
    ]
    run = cloud.store.get_run(missed[0]["run_id"])
    assert run is not None
    assert run.announced_at is not None
    assert cloud.behaviour.refuse_events[RUN_COMPLETED] == 0


def test_one_builder_makes_the_event_of_every_ending(cloud: LocalCloud) -> None:
    cloud.launch(1, tags={"backup-job": "true"})
    finished = cloud.run(seed_input())
    rejected = cloud.run("not an object")
    for run_id in (finished, rejected):
        run = cloud.store.get_run(run_id)
        assert run is not None
        [announced] = completed_events(cloud, run_id)
        assert announced == RunCompleted.of(run).model_dump(mode="json")
