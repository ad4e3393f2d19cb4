"""`finalize.phase_spans`: how long each phase of a run took, for its duration metric."""

from __future__ import annotations

from chalicelib.logic.finalize import phase_spans
from chalicelib.models.state import InstanceRecord, Phase, PhaseResult, PhaseStatus


def member(instance_id: str, **phases: tuple[str | None, str | None]) -> InstanceRecord:
    return InstanceRecord(
        run_id="run",
        group_id="group",
        instance_id=instance_id,
        original_state="running",
        phases={
            Phase(name): PhaseResult(status=PhaseStatus.SUCCEEDED, started_at=start, ended_at=end)
            for name, (start, end) in phases.items()
        },
    )


def test_a_phase_lasts_from_its_first_start_to_its_last_end() -> None:
    spans = phase_spans(
        [
            member(
                "i-1",
                PRE_SCRIPT=("2026-01-01T02:00:00Z", "2026-01-01T02:00:30Z"),
                BACKUP=("2026-01-01T02:01:00Z", "2026-01-01T03:00:00Z"),
            ),
            member(
                "i-2",
                PRE_SCRIPT=("2026-01-01T02:00:10Z", "2026-01-01T02:02:00Z"),
                BACKUP=("2026-01-01T02:03:00Z", "2026-01-01T02:30:00Z"),
            ),
        ]
    )
    assert spans == {Phase.PRE_SCRIPT: 120.0, Phase.BACKUP: 3540.0}


def test_members_that_did_not_go_through_a_phase_do_not_count() -> None:
    skipped = member("i-2", STOP=(None, "2026-01-01T09:00:00Z"))  # ended, never started
    unfinished = member("i-3", STOP=("2026-01-01T01:00:00Z", None))
    spans = phase_spans(
        [member("i-1", STOP=("2026-01-01T02:00:00Z", "2026-01-01T02:01:00Z")), skipped, unfinished]
    )
    assert spans == {Phase.STOP: 60.0}
    assert phase_spans([skipped]) == {}
    assert phase_spans([]) == {}
