"""A run of many groups counts them in tallies: the run header is written once per
tally, not once per group, and groups of one tally that finish at the same moment (with
DynamoDB cancelling some of their transactions for a conflict) count the tally out of the
run exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chalicelib.logic.decisions import run_id_for, tallies_of
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from prepost.local.ledger import Ledger
from tests.conftest import seed_input

FLEET = 12
PER_TALLY = 4  # three tallies of four groups


def _start(cloud: LocalCloud, per_tally: int) -> str:
    cloud.configure_stage(PREPOST_TALLY_GROUPS=str(per_tally))
    cloud.launch(FLEET, tags={"backup-job": "true"})
    event = cloud.start_event(seed_input() | {"GroupBy": "instance"})
    cloud.publish(event)
    return run_id_for(event["id"], AwsEvent.model_validate(event).time)


def _assert_counted_out(cloud: LocalCloud, run_id: str) -> None:
    """The run succeeded, every one of its three tallies closed at zero, and the header
    counted each out once."""
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.SUCCEEDED
    assert (run.tallies, run.groups_pending) == (3, 0)
    for tally in range(3):
        counted = cloud.store.get_tally(run_id, tally)
        assert counted is not None
        assert (counted.closed, counted.pending) == (True, 0)


def _header_writes(ledger: Ledger) -> int:
    return sum(n for (pk, sk, _), n in ledger.item_writes.items() if sk == "RUN")


def test_groups_are_dealt_round_over_tallies_of_the_size_asked() -> None:
    ids = [f"i-{n:017x}" for n in range(1_001)]
    tally = tallies_of(ids, 500)
    assert sorted(set(tally.values())) == [0, 1, 2]
    assert max(list(tally.values()).count(t) for t in range(3)) <= 334
    assert tallies_of(ids[:500], 500) == {}  # the run header counts them itself


def test_the_run_header_is_written_per_tally_not_per_group(cloud: LocalCloud) -> None:
    cloud.ledger = ledger = Ledger()
    run_id = _start(cloud, PER_TALLY)
    cloud.drain()
    _assert_counted_out(cloud, run_id)
    # three tallies counted out, and the header's own few writes (activation, the
    # last-group rearm, the final record, its announcement)
    assert _header_writes(ledger) <= 3 + 6, ledger.item_writes


def test_without_tallies_the_header_is_written_per_group(cloud: LocalCloud) -> None:
    """The comparison for the test above: the same run, counted on the header."""
    cloud.ledger = ledger = Ledger()
    run_id = _start(cloud, 1000)
    cloud.drain()
    run = cloud.store.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.SUCCEEDED
    assert run.tallies == 0
    assert _header_writes(ledger) >= FLEET


def test_groups_of_one_tally_finishing_together_count_it_out_once(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    held: list[dict[str, Any]] = []

    def hold_group_done(event: dict[str, Any]) -> bool:
        done = event.get("detail-type") == "PrePostBackup Phase Completed"
        if done and event["detail"].get("next_phase") == "DONE":
            held.append(event)
            return True
        return False

    behaviour.lose_event = hold_group_done
    run_id = _start(cloud, PER_TALLY)
    while len(held) < FLEET:
        assert cloud.step(1) == 1
    behaviour.lose_event = None
    behaviour.transaction_conflict_every = 3
    with ThreadPoolExecutor(max_workers=FLEET) as pool:
        list(pool.map(lambda event: cloud.invoke("finalize_group", event), held))
    cloud.drain()

    assert any(what.startswith("conflict ") for _, what in cloud.timeline)
    assert [what for _, what in cloud.timeline if what.startswith("error ")] == []
    _assert_counted_out(cloud, run_id)
    completed = [e for e in cloud.emitted if e["detail-type"] == "PrePostBackup Run Completed"]
    assert len(completed) == 1
