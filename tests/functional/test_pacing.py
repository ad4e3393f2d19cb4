"""Parts of a large group enter STOP, START and BACKUP paced to the account's token
buckets (`chalicelib/logic/pacing.py`), so that EC2 throttles none of their calls.

The buckets are scaled down here, in the stage's settings and in the emulated EC2 alike
(`Behaviour.ec2_buckets`), so that a fleet of eight in parts of two needs several of the
reconciler's windows to stop and to start.
"""

from __future__ import annotations

from chalicelib.config import settings_from
from chalicelib.logic import pacing
from chalicelib.models.state import Phase, RunStatus
from prepost.local.clock import VirtualClock
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import outcome

FLEET = 8
BURST, PER_SECOND = 4, 0.01  # a window of the reconciler refills 3 instances' worth


def _scaled(cloud: LocalCloud, behaviour: Behaviour, paced: bool) -> None:
    behaviour.ec2_buckets = {op: (BURST, PER_SECOND) for op in ("StopInstances", "StartInstances")}
    stage = {"PREPOST_GROUP_PART_SIZE": "2"}
    if paced:
        stage |= {
            "PREPOST_EC2_STOP_BURST": str(BURST),
            "PREPOST_EC2_STOPS_PER_SECOND": str(PER_SECOND),
            "PREPOST_EC2_START_BURST": str(BURST),
            "PREPOST_EC2_STARTS_PER_SECOND": str(PER_SECOND),
        }
    cloud.configure_stage(**stage)


def _throttled(cloud: LocalCloud) -> int:
    return sum(1 for _, _, _, code in cloud.refused if code == "RequestLimitExceeded")


def _call_times(cloud: LocalCloud, operation: str) -> list[str]:
    return sorted({str(at) for at, what in cloud.timeline if what == f"call ec2:{operation}"})


def test_parts_stop_and_start_within_the_buckets(behaviour: Behaviour, cloud: LocalCloud) -> None:
    _scaled(cloud, behaviour, paced=True)
    cloud.launch(FLEET, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input() | {"StartStopEC2Required": True})

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert _throttled(cloud) == 0
    # Four parts of two: two fit in the full bucket, then one a window.
    assert len(_call_times(cloud, "StopInstances")) == 3
    assert len(_call_times(cloud, "StartInstances")) == 3
    assert all(cloud.state_of(i) == "running" for i in instances)


def test_unpaced_parts_are_throttled_and_retried_not_failed(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    """The same buckets, the stage not told of them: EC2 throttles, the calls are tried
    again with backoff, and no instance fails for it."""
    _scaled(cloud, behaviour, paced=False)
    cloud.launch(FLEET, tags={"backup-job": "true"})
    run_id = cloud.run(seed_input() | {"StartStopEC2Required": True})

    run, instances = outcome(cloud, run_id)
    assert _throttled(cloud) > 0
    assert run.status is RunStatus.SUCCEEDED
    assert all(cloud.state_of(i) == "running" for i in instances)


def test_the_schedule_fills_the_bucket_then_one_refill_a_window() -> None:
    settings = settings_from({"PREPOST_TABLE_NAME": "table"})
    stops = pacing.schedule(settings, Phase.STOP, [100] * 25)
    # 1,000 at once, then what 20 a second refill in a window, at most a full bucket.
    assert [s.offset for s in stops] == [0] * 10 + [300] * 10 + [600] * 5
    starts = pacing.schedule(settings, Phase.START, [100] * 25)
    # 2 a second refill 600 in five minutes: six parts a window after the first ten.
    assert [s.offset for s in starts] == [0] * 10 + [300] * 6 + [600] * 6 + [900] * 3
    backups = pacing.schedule(settings, Phase.BACKUP, [100] * 12)
    # StartBackupJob by calls: the parts that go together share the rate of 5 a second.
    assert [s.offset for s in backups] == [0] * 5 + [300] * 5 + [600] * 2
    assert {s.calls_per_second for s in backups[:5]} == {1.0}
    assert {s.calls_per_second for s in backups[10:]} == {2.5}
    assert pacing.schedule(settings, Phase.PRE_SCRIPT, [100] * 30) == [pacing.Slot(0)] * 30
    assert pacing.schedule(settings, Phase.BACKUP, []) == []  # every instance held elsewhere


def test_a_pacer_waits_between_calls() -> None:
    clock = VirtualClock()
    waits: list[float] = []
    clock.on_sleep = waits.append
    pacer = pacing.Pacer(clock, 2)
    for _ in range(5):
        pacer.wait()
    assert waits == [0.5] * 4
    unpaced = pacing.Pacer(clock, None)
    for _ in range(3):
        unpaced.wait()
    assert len(waits) == 4
