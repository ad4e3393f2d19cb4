"""Reading the outcome of a local run."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.models.state import InstanceRecord, Phase, PhaseStatus, RunRecord
from prepost.local.cloud import LocalCloud


def outcome(cloud: LocalCloud, run_id: str) -> tuple[RunRecord, dict[str, InstanceRecord]]:
    run = cloud.store.get_run(run_id)
    assert run is not None, f"no record for run {run_id}"
    return run, {i.instance_id: i for i in cloud.store.list_instances(run_id)}


def calls(cloud: LocalCloud, service: str, operation: str) -> list[dict[str, Any]]:
    return [params for s, o, params in cloud.calls if (s, o) == (service, operation)]


def fleet_calls(cloud: LocalCloud) -> list[tuple[str, str]]:
    """Every call that touches the fleet or the backups (not the state table, not events)."""
    return [(s, o) for s, o, _ in cloud.calls if s in ("ec2", "ssm", "backup")]


def statuses(instance: InstanceRecord) -> dict[Phase, PhaseStatus]:
    return {phase: result.status for phase, result in instance.phases.items()}


def completed_events(cloud: LocalCloud, run_id: str) -> list[dict[str, Any]]:
    return [
        e["detail"]
        for e in cloud.emitted
        if e["detail-type"] == "PrePostBackup Run Completed" and e["detail"]["run_id"] == run_id
    ]


def script_targets(cloud: LocalCloud, phase: Phase) -> list[str]:
    return [
        instance_id
        for params in calls(cloud, "ssm", "SendCommand")
        if params["Comment"].endswith(str(phase))
        for instance_id in params["InstanceIds"]
    ]


def parameter(params: dict[str, Any], name: str) -> Any:
    value = params["Parameters"][name][0]
    return json.loads(value) if name == "sourceInfo" else value
