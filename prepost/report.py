"""One report of a run, the same from a simulation and from `prepost status`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from chalicelib.models.state import (
    PHASE_ORDER,
    GroupRecord,
    InstanceRecord,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
)

TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"


def seconds_between(start: str, end: str | None) -> int:
    """Seconds from one stored timestamp to another; 0 while `end` is not set."""
    if not end:
        return 0
    return int(
        (datetime.strptime(end, TIMESTAMP) - datetime.strptime(start, TIMESTAMP)).total_seconds()
    )


def run_report(
    run: RunRecord, instances: list[InstanceRecord], groups: Sequence[GroupRecord] = ()
) -> dict[str, Any]:
    """The run and, per instance, each phase: status and reason always, other fields when
    set; and what the reconciler set aside (the run or its groups), with the reason."""
    aside = [("run", run)] + [(g.label or g.group_id, g) for g in groups]
    return {
        "run_id": run.run_id,
        "status": str(run.status),
        "reason": run.reason,
        "errors": run.errors,
        "profile": run.profile,
        "slot": run.slot,
        "notified_at": run.notified_at,
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
                **windows(i),
                "phases": {
                    str(phase): phase_entry(phase, result) for phase, result in i.phases.items()
                },
            }
            for i in sorted(instances, key=lambda i: i.instance_id)
        ],
        "timeline": phase_timeline(instances),
        "set_aside": [
            {"item": item, "reason": record.set_aside_reason, "failures": record.reconcile_failures}
            for item, record in aside
            if record.set_aside_reason
        ],
    }


def phase_entry(phase: Phase, result: PhaseResult) -> dict[str, Any]:
    """One phase of an instance: status and reason always, other fields when set; a
    BACKUP's consistency always, null unless there is a recovery point to label (the
    backup succeeded, or its job completed after the phase had failed): a record written
    before failed backups lost their label may still carry the one their job started with."""
    entry = {"status": str(result.status), "reason": result.reason} | result.model_dump(
        mode="json", exclude_none=True
    )
    if phase is Phase.BACKUP:
        labelled = result.status is PhaseStatus.SUCCEEDED or bool(result.recovery_point_arn)
        entry["consistency"] = str(result.consistency) if labelled and result.consistency else None
    return entry


def windows(instance: InstanceRecord) -> dict[str, Any]:
    """How long the instance was frozen and stopped, and when its data was captured.

    `frozen_seconds`: from its pre-script's end to its post-script being sent, or to its
    stop if the run stopped it (a stop ends the freeze: the operating system shuts down,
    and no file system freeze or database lock outlives it); `stopped_seconds`: from its
    stop to its start being requested; `seconds_to_capture`: from the freeze (or the
    stop, when stopped) to the moment its snapshots were initiated. None where the
    instance had no such window (or it is not over)."""
    pre, stop = instance.phase(Phase.PRE_SCRIPT), instance.phase(Phase.STOP)
    start, post = instance.phase(Phase.START), instance.phase(Phase.POST_SCRIPT)
    backup = instance.phase(Phase.BACKUP)
    stopped_at = stop.ended_at if stop.status is PhaseStatus.SUCCEEDED else None
    frozen_at = pre.ended_at if pre.status is PhaseStatus.SUCCEEDED else None
    thawed_at = stopped_at or (post.started_at if post.sent else None)
    held_from = stopped_at or frozen_at
    return {
        "captured_at": backup.captured_at,
        "released_at": backup.released_at,
        "frozen_seconds": _span(frozen_at, thawed_at),
        "stopped_seconds": _span(stopped_at, start.started_at if stopped_at else None),
        "seconds_to_capture": _span(held_from, backup.captured_at),
    }


def _span(start: str | None, end: str | None) -> int | None:
    return seconds_between(start, end) if start and end else None


def phase_timeline(instances: list[InstanceRecord]) -> list[dict[str, Any]]:
    """Per group, each phase in order: when its first member started, when its last one
    ended (None while one is still pending or in progress), and its outcomes."""
    members: dict[tuple[str, str], list[PhaseResult]] = {}
    for instance in instances:
        group = instance.group_label or instance.group_id
        for each_phase, result in instance.phases.items():
            members.setdefault((group, str(each_phase)), []).append(result)
    order = {str(phase): n for n, phase in enumerate(PHASE_ORDER)}
    rows = []
    for group, phase in sorted(members, key=lambda key: (key[0], order[key[1]])):
        results = members[(group, phase)]
        started = min((r.started_at for r in results if r.started_at), default=None)
        unfinished = any(
            r.status in (PhaseStatus.PENDING, PhaseStatus.IN_PROGRESS) for r in results
        )
        ended = (
            None if unfinished else max((r.ended_at for r in results if r.ended_at), default=None)
        )
        rows.append(
            {
                "group": group,
                "phase": phase,
                "started_at": started,
                "ended_at": ended,
                "duration_seconds": seconds_between(started, ended) if started and ended else None,
                "counts": dict(sorted(Counter(str(r.status) for r in results).items())),
            }
        )
        released = [r for r in results if r.released_at]
        if phase == Phase.BACKUP and released and started:
            # The milestone inside BACKUP: the group released (START, POST_SCRIPT) at capture.
            last = max(r.released_at or "" for r in released)
            rows.append(
                {
                    "group": group,
                    "phase": "BACKUP (released at capture)",
                    "started_at": started,
                    "ended_at": last,
                    "duration_seconds": seconds_between(started, last),
                    "counts": dict(sorted(Counter(
                        "CAPTURED" if r.captured_at else "RELEASED UNCAPTURED" for r in released
                    ).items())),
                }
            )  # fmt: skip
    return rows
