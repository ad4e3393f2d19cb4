"""Refusals AWS gives for a moment are retried with backoff until the deadline; final ones
fail at once; a stop or start refused for the instance's state asks EC2 the state."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import pairwise
from typing import Any

import pytest

from chalicelib.gateways.ec2 import Ec2Gateway
from chalicelib.gateways.ssm import SsmGateway
from chalicelib.models.state import InstanceStatus, Phase, PhaseStatus, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import VAULT, _check_policies, seed_input
from tests.functional.helpers import outcome


@pytest.fixture(params=["dynamodb", "memory"])
def any_cloud(behaviour: Behaviour, request: pytest.FixtureRequest) -> Iterator[LocalCloud]:
    with LocalCloud(behaviour=behaviour, store=request.param) as local:
        local.create_vault(VAULT)
        yield local
        assert [(h, repr(e)) for h, _, e in local.dead_letters] == []
        _check_policies(local)


def on_event(behaviour: Behaviour, watch: Callable[[dict[str, Any]], None]) -> None:
    """Call `watch` with every event EventBridge delivers (none is lost)."""

    def lose(event: dict[str, Any]) -> bool:
        watch(event)
        return False

    behaviour.lose_event = lose


def later(cloud: LocalCloud, seconds: float, change: Callable[[], object]) -> None:
    """Make `change` `seconds` of virtual time from now (AWS stops refusing, say)."""

    def apply() -> None:
        change()

    cloud.schedule(seconds, apply)


def backup_completed(event: dict[str, Any]) -> bool:
    return event.get("source") == "aws.backup" and event["detail"].get("state") == "COMPLETED"


def released_at_capture(event: dict[str, Any]) -> bool:
    """The group left BACKUP for START (its members captured; their jobs go on)."""
    detail = event.get("detail") or {}
    return event.get("detail-type") == "PrePostBackup Phase Completed" and detail == detail | {
        "phase": "BACKUP",
        "next_phase": "START",
    }


def is_ec2(event: dict[str, Any], instance_id: str, state: str) -> bool:
    detail = event.get("detail") or {}
    return event.get("source") == "aws.ec2" and detail == detail | {
        "instance-id": instance_id,
        "state": state,
    }


def post_script_sends(
    monkeypatch: pytest.MonkeyPatch, cloud: LocalCloud
) -> list[tuple[datetime, list[str]]]:
    """(when, instance ids) of every post-script SendCommand the app tried."""
    tried: list[tuple[datetime, list[str]]] = []
    send = SsmGateway.send_script

    def spy(self: SsmGateway, instance_ids: list[str], *args: Any) -> str:
        if args[-1].endswith(str(Phase.POST_SCRIPT)):
            tried.append((cloud.clock.now(), list(instance_ids)))
        return send(self, instance_ids, *args)

    monkeypatch.setattr(SsmGateway, "send_script", spy)
    return tried


def test_throttled_post_script_is_sent_again_and_thaws(
    behaviour: Behaviour, any_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = any_cloud
    ids = cloud.launch(2, tags={"backup-job": "true"})
    tried = post_script_sends(monkeypatch, cloud)

    def throttle_after_start(event: dict[str, Any]) -> None:
        if is_ec2(event, ids[0], "running") and not tried:
            for instance_id in ids:  # SSM throttles the account for ten minutes
                behaviour.send_command_errors[instance_id] = "ThrottlingException"
            later(cloud, 600, behaviour.send_command_errors.clear)

    on_event(behaviour, throttle_after_start)
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    for instance_id in ids:
        post = instances[instance_id].phase(Phase.POST_SCRIPT)
        assert post.status is PhaseStatus.SUCCEEDED  # thawed
        assert post.retries
        assert "ThrottlingException" in (post.last_error or "")
    assert len(tried) >= 2
    # The throttled command for both was not followed by one command per instance.
    assert all(len(instance_ids) == 2 for _, instance_ids in tried)


def test_post_script_refused_while_the_agent_registers_again_is_delivered(
    behaviour: Behaviour, any_cloud: LocalCloud
) -> None:
    cloud = any_cloud
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})

    def agent_offline_after_start(event: dict[str, Any]) -> None:
        if is_ec2(event, instance_id, "running"):
            behaviour.send_command_errors[instance_id] = "InvalidInstanceId"
            later(cloud, 8 * 60, lambda: behaviour.send_command_errors.pop(instance_id))

    on_event(behaviour, agent_offline_after_start)
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    post = instances[instance_id].phase(Phase.POST_SCRIPT)
    assert post.status is PhaseStatus.SUCCEEDED
    assert "InvalidInstanceId" in (post.last_error or "")


def test_pre_script_refused_with_invalid_instance_id_fails_at_once(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    bad, good = cloud.launch(2, tags={"backup-job": "true"})
    behaviour.send_command_errors[bad] = "InvalidInstanceId"  # a final error for a freeze
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    pre = instances[bad].phase(Phase.PRE_SCRIPT)
    assert pre.status is PhaseStatus.FAILED
    assert pre.refused
    assert not pre.timed_out
    assert not pre.retries
    assert instances[bad].phase(Phase.BACKUP).consistency == "crash-consistent"
    assert instances[good].status is InstanceStatus.SUCCEEDED  # isolated: the other is sent


def test_throttled_start_is_retried_and_started(
    behaviour: Behaviour, any_cloud: LocalCloud
) -> None:
    cloud = any_cloud
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.power_errors[(instance_id, "StartInstances")] = "RequestLimitExceeded"

    def unthrottle_soon(event: dict[str, Any]) -> None:
        if released_at_capture(event):
            later(cloud, 3 * 60, lambda: behaviour.power_errors.clear())

    on_event(behaviour, unthrottle_soon)
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    start = instances[instance_id].phase(Phase.START)
    assert start.status is PhaseStatus.SUCCEEDED
    assert "RequestLimitExceeded" in (start.last_error or "")
    assert cloud.state_of(instance_id) == "running"


def test_stop_throttled_for_a_moment_is_retried(behaviour: Behaviour, cloud: LocalCloud) -> None:
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.power_errors[(instance_id, "StopInstances")] = "RequestLimitExceeded"
    later(cloud, 3 * 60, behaviour.power_errors.clear)
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    stop = instances[instance_id].phase(Phase.STOP)
    assert stop.status is PhaseStatus.SUCCEEDED
    assert stop.retries == 1
    assert instances[instance_id].phase(Phase.BACKUP).consistency == "app-consistent"


def test_start_refused_while_stopping_waits_for_the_stop(
    behaviour: Behaviour, any_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = any_cloud
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    stopping = {"until": None}  # moto stops at once; AWS takes minutes: emulate `stopping`
    asked: list[str] = []
    states = Ec2Gateway.states

    def slow_stop(self: Ec2Gateway, instance_ids: list[str]) -> dict[str, str]:
        found = states(self, instance_ids)
        asked.extend(instance_ids)
        if stopping["until"] and instance_id in found:
            found[instance_id] = "stopping"
        return found

    monkeypatch.setattr(Ec2Gateway, "states", slow_stop)

    def still_stopping(event: dict[str, Any]) -> None:
        if released_at_capture(event) and not stopping["until"]:
            stopping["until"] = True
            behaviour.power_errors[(instance_id, "StartInstances")] = "IncorrectInstanceState"

            def stopped() -> None:
                stopping["until"] = None
                behaviour.power_errors.clear()

            later(cloud, 7 * 60, stopped)

    on_event(behaviour, still_stopping)
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    start = instances[instance_id].phase(Phase.START)
    assert start.status is PhaseStatus.SUCCEEDED
    assert "IncorrectInstanceState" in (start.last_error or "")
    assert instance_id in asked  # EC2 was asked the state before trying again
    assert run.status is RunStatus.SUCCEEDED
    assert cloud.state_of(instance_id) == "running"


def test_start_refused_for_an_instance_already_running_succeeds(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})

    def started_by_someone(event: dict[str, Any]) -> None:
        if backup_completed(event) and not behaviour.power_errors:
            cloud.ec2.start_instances(InstanceIds=[instance_id])
            behaviour.power_errors[(instance_id, "StartInstances")] = "IncorrectInstanceState"

    on_event(behaviour, started_by_someone)
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    assert instances[instance_id].phase(Phase.START).status is PhaseStatus.SUCCEEDED
    assert run.status is RunStatus.SUCCEEDED


def test_terminated_during_backup_with_lost_events_is_reported_terminated(
    behaviour: Behaviour, any_cloud: LocalCloud
) -> None:
    cloud = any_cloud
    doomed, survivor = cloud.launch(2, tags={"backup-job": "true"})

    def terminate() -> None:
        cloud.ec2.terminate_instances(InstanceIds=[doomed])
        # What AWS answers a start of a terminated instance (moto would start it).
        behaviour.power_errors[(doomed, "StartInstances")] = "IncorrectInstanceState"

    later(cloud, 930, terminate)  # stopped (seen at the 900 s tick), waiting for the capture
    behaviour.lose_event = lambda event: (
        event.get("source") == "aws.ec2" and event["detail"]["instance-id"] == doomed
    )
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    gone = instances[doomed]
    assert gone.terminated
    assert gone.status is InstanceStatus.FAILED  # not STUCK_STOPPED
    assert (gone.reason or "").startswith("instance terminated during the run")
    assert gone.phase(Phase.START).reason == "instance terminated during the phase"
    assert gone.phase(Phase.POST_SCRIPT).status is PhaseStatus.SKIPPED
    assert instances[survivor].status is InstanceStatus.SUCCEEDED
    assert run.status is RunStatus.COMPLETED_WITH_ERRORS


def test_backoff_grows_and_stops_at_the_deadline(
    behaviour: Behaviour, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    tried = post_script_sends(monkeypatch, cloud)

    def throttle_for_good(event: dict[str, Any]) -> None:
        if is_ec2(event, instance_id, "running"):
            behaviour.send_command_errors[instance_id] = "ThrottlingException"

    on_event(behaviour, throttle_for_good)
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    post = instances[instance_id].phase(Phase.POST_SCRIPT)
    assert post.status is PhaseStatus.FAILED
    assert post.timed_out
    assert "ThrottlingException" in (post.reason or "")  # the last error, in the reason
    times = [when for when, _ in tried]
    gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
    assert len(gaps) >= 3
    assert gaps[0] < gaps[1] < gaps[2]  # 5, 10, 20 minutes
    started, ended = times[0], datetime.fromisoformat(post.ended_at or "")
    assert times[-1] <= ended  # nothing tried after the deadline
    assert (ended - started).total_seconds() <= 600 + 3600 + 300 + 300  # its budget, a tick


def test_a_final_error_still_fails_at_once(behaviour: Behaviour, cloud: LocalCloud) -> None:
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.power_errors[(instance_id, "StartInstances")] = "UnsupportedOperation"
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    start = instances[instance_id].phase(Phase.START)
    assert start.status is PhaseStatus.FAILED
    assert start.refused
    assert not start.timed_out
    assert not start.retries
    assert instances[instance_id].status is InstanceStatus.STUCK_STOPPED


def test_a_start_made_at_its_deadline_gets_one_more_look(
    behaviour: Behaviour, any_cloud: LocalCloud
) -> None:
    """Throttled twice, the start goes through on the reconciler's pass at the deadline;
    that pass does not time it out at once (found by the property test: the instance
    came up seconds later, reported STUCK_STOPPED)."""
    cloud = any_cloud
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.refuse_calls[(instance_id, "StartInstances")] = ["RequestLimitExceeded"] * 2
    run_id = cloud.run(seed_input())

    run, instances = outcome(cloud, run_id)
    start = instances[instance_id].phase(Phase.START)
    assert start.retries == 2
    assert (start.status, start.timed_out) == (PhaseStatus.SUCCEEDED, None)
    assert instances[instance_id].status is InstanceStatus.SUCCEEDED
    assert run.status is RunStatus.SUCCEEDED
    assert cloud.state_of(instance_id) == "running"


def test_a_start_refused_until_its_deadline_finds_an_instance_no_stop_reached(
    behaviour: Behaviour, any_cloud: LocalCloud
) -> None:
    """The stop was throttled until its deadline, so the instance never stopped; the start
    is refused until its own: at the deadline EC2 is asked, and a running instance is
    not reported STUCK_STOPPED (found by the property test)."""
    cloud = any_cloud
    (instance_id,) = cloud.launch(1, tags={"backup-job": "true"})
    behaviour.power_errors[(instance_id, "StopInstances")] = "RequestLimitExceeded"
    behaviour.power_errors[(instance_id, "StartInstances")] = "RequestLimitExceeded"
    run_id = cloud.run(seed_input())

    _, instances = outcome(cloud, run_id)
    record = instances[instance_id]
    assert record.phase(Phase.STOP).status is PhaseStatus.FAILED
    assert record.phase(Phase.START).status is PhaseStatus.SUCCEEDED
    assert record.status is not InstanceStatus.STUCK_STOPPED
    assert cloud.state_of(instance_id) == "running"
