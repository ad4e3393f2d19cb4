"""Many results of one group at once, with DynamoDB cancelling some of their transactions
for a conflict (as it does when requests on one item overlap): a conflict is contention,
not a failure. The store tries the transaction again; no handler fails, every result is
counted once, and the group's phase closes exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from chalicelib.logic.decisions import run_id_for
from chalicelib.models.events import AwsEvent
from chalicelib.models.state import GroupPhaseState, Phase, RunStatus
from prepost.local.cloud import Behaviour, LocalCloud
from tests.conftest import seed_input
from tests.functional.helpers import outcome

FLEET = 12


def test_concurrent_results_under_conflicts_close_the_phase_once(
    behaviour: Behaviour, cloud: LocalCloud
) -> None:
    ids = cloud.launch(FLEET, tags={"backup-job": "true"})
    event = cloud.start_event(seed_input())
    cloud.publish(event)
    run_id = run_id_for(event["id"], AwsEvent.model_validate(event).time)
    for _ in range(5_000):
        groups = cloud.store.list_groups(run_id)
        sent = [i for i in cloud.store.list_instances(run_id) if i.phase(Phase.PRE_SCRIPT).sent]
        if groups and groups[0].phase_state is GroupPhaseState.OPEN and len(sent) == FLEET:
            break
        assert cloud.step(1) == 1
    command = {i.instance_id: i.phase(Phase.PRE_SCRIPT).command_id for i in sent}
    reports = [cloud._ssm_event(command[i] or "", i, "Success") for i in ids]

    behaviour.transaction_conflict_every = 3
    with ThreadPoolExecutor(max_workers=FLEET) as pool:
        list(pool.map(lambda report: cloud.invoke("script_invocation_changed", report), reports))
    cloud.drain()

    conflicts = [what for _, what in cloud.timeline if what.startswith("conflict ")]
    assert conflicts, "the store was never refused: the test proves nothing"
    assert [what for _, what in cloud.timeline if what.startswith("error ")] == []
    closed = [
        e["detail"]
        for e in cloud.emitted
        if e["detail-type"] == "PrePostBackup Phase Completed"
        and e["detail"]["phase"] == Phase.PRE_SCRIPT
    ]
    assert len(closed) == 1, closed
    assert closed[0]["succeeded"] == FLEET
    run, instances = outcome(cloud, run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert len(instances) == FLEET
