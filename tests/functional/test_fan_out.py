"""A run of many groups (one per instance) starts with a few requests for many groups
each, which the first phase's handler fans out: the start handler's PutEvents stay a
handful however many groups there are, and a lost or half-made fan-out is made whole."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.logic.transitions import FAN_OUT_BYTES, FAN_OUT_INLINE, phase_requests
from chalicelib.models.events import FAN_OUT_GROUPS
from chalicelib.models.state import Phase, RunRecord, RunStatus
from prepost.local.cloud import LocalCloud
from prepost.report import seconds_between
from tests.property import faults, invariants
from tests.property.faults import Schedule

RUN = RunRecord(run_id="r-1", status=RunStatus.RUNNING, created_at="2026-12-05T00:00:00Z")
FLEET = 250  # groups: more than FAN_OUT_INLINE


def _groups(requests: list[dict[str, Any]]) -> list[str]:
    return [g for r in requests for g in [r["group_id"], *r.get("more_group_ids", [])]]


@pytest.mark.parametrize("count", [1, FAN_OUT_INLINE, FAN_OUT_INLINE + 1, 1_200, 10_000])
def test_requests_cover_every_group_once_in_bounded_pieces(count: int) -> None:
    ids = [f"i-{n:017x}" for n in range(count)]
    requests = phase_requests(RUN, ids, Phase.PRE_SCRIPT)
    assert _groups(requests) == ids
    if count <= FAN_OUT_INLINE:
        assert all("more_group_ids" not in r for r in requests)  # the usual single requests
    else:
        assert len(requests) == -(-count // FAN_OUT_GROUPS)
        assert all(len(r.get("more_group_ids", [])) < FAN_OUT_GROUPS for r in requests)


def test_long_group_ids_are_split_by_size() -> None:
    """Group ids are short today (an instance id, a part of a hashed tag value), but a
    request is cut by size too: ten of them must fit one PutEvents call (256 KB in all)."""
    ids = [f"g{'v' * 200}{n}" for n in range(1_000)]
    requests = phase_requests(RUN, ids, Phase.STOP)
    assert _groups(requests) == ids
    for request in requests:
        ids_bytes = sum(len(g) + 3 for g in [request["group_id"], *request["more_group_ids"]])
        assert ids_bytes <= FAN_OUT_BYTES + 300


def _run(cloud: LocalCloud, seed: int) -> tuple[Schedule, list[str]]:
    schedule = Schedule(size=FLEET, groups=1, group_by="instance", stopped_before=0,
                        start_stop=True, pre_script=True, post_script=True, abort=False,
                        seed=seed)  # fmt: skip
    cloud.configure_stage(PREPOST_MAX_INSTANCES_PER_RUN=str(FLEET))
    return schedule, faults.start(cloud, schedule)


def _puts_by(cloud: LocalCloud, handler: str) -> int:
    return sum(1 for h, service, op, _ in cloud.handler_calls
               if (h, service, op) == (handler, "events", "PutEvents"))  # fmt: skip


@pytest.mark.slow
def test_a_run_of_one_group_per_instance_fans_its_first_requests_out() -> None:
    with LocalCloud(behaviour=None, store="memory", seed=1) as cloud:
        schedule, ids = _run(cloud, 1)
        cloud.drain(max_events=500_000)
        assert invariants.check(cloud, schedule, ids) == []
        # Run Started and one request for the 250 groups: one call, not 26
        assert _puts_by(cloud, "start_run_handler") == 1
        entries = [
            json.loads(entry["Detail"])
            for h, _, op, params in cloud.handler_calls
            if (h, op) == ("start_run_handler", "PutEvents")
            for entry in params["Entries"]
        ]
        assert [len(e["more_group_ids"]) for e in entries if "more_group_ids" in e] == [249]
        # ...which the first phase's handler put as 250 single requests: every group
        # entered its first phase within a minute, not when the reconciler found it due
        run = cloud.store.get_run(invariants.run_ids(cloud)[0])
        assert run is not None
        started = [
            i.phase(Phase.PRE_SCRIPT).started_at for i in cloud.store.list_instances(run.run_id)
        ]
        assert len(started) == FLEET
        assert max(seconds_between(run.created_at, at) for at in started if at) < 60


@pytest.mark.slow
def test_a_lost_fan_out_leaves_the_groups_to_the_reconciler() -> None:
    def lose(event: dict[str, Any]) -> bool:
        return bool(event.get("detail", {}).get("more_group_ids"))

    with LocalCloud(behaviour=None, store="memory", seed=2) as cloud:
        cloud.behaviour.lose_event = lose
        schedule, ids = _run(cloud, 2)
        cloud.drain(max_events=500_000)
        assert any(what.startswith("lost ") for _, what in cloud.timeline)
        assert invariants.check(cloud, schedule, ids) == []


@pytest.mark.slow
def test_a_fan_out_that_dies_half_way_is_made_whole_by_its_retry() -> None:
    with LocalCloud(behaviour=None, store="memory", seed=3) as cloud:
        cloud.behaviour.crash_at_call[("run_scripts", "PutEvents")] = 5  # 40 of 250 put
        schedule, ids = _run(cloud, 3)
        cloud.drain(max_events=500_000)
        assert any(what.startswith("crash after PutEvents") for _, what in cloud.timeline)
        assert invariants.check(cloud, schedule, ids) == []
