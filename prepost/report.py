"""One report of a run, the same from a simulation and from `prepost status`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chalicelib.models.state import InstanceRecord, RunRecord

TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


def seconds_between(start: str, end: str | None) -> int:
    """Seconds from one stored timestamp to another; 0 while `end` is not set."""
    if not end:
        return 0
    return int(
        (datetime.strptime(end, TIMESTAMP) - datetime.strptime(start, TIMESTAMP)).total_seconds()
    )


def run_report(run: RunRecord, instances: list[InstanceRecord]) -> dict[str, Any]:
    """The run and, per instance, each phase: status and reason always, other fields when set."""
    return {
        "run_id": run.run_id,
        "status": str(run.status),
        "reason": run.reason,
        "errors": run.errors,
        "counts": dict(sorted(run.counts.items())),
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "duration_seconds": seconds_between(run.created_at, run.finished_at),
        "instances": [
            {
                "instance_id": i.instance_id,
                "group": i.group_label or i.group_id,
                "status": str(i.status),
                "reason": i.reason,
                "phases": {
                    str(phase): {"status": str(result.status), "reason": result.reason}
                    | result.model_dump(mode="json", exclude_none=True)
                    for phase, result in i.phases.items()
                },
            }
            for i in sorted(instances, key=lambda i: i.instance_id)
        ],
    }
