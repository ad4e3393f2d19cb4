"""When a member is captured (`capture.capture_of`), and the options that ask for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from chalicelib.gateways.ec2 import Image, Snapshot
from chalicelib.logic import capture
from chalicelib.models.run_input import ReleaseAfter, RunInput
from chalicelib.models.state import Phase, PhaseResult, PhaseStatus
from tests.conftest import seed_input

FROZEN = datetime(2026, 11, 26, 2, 1, 15, tzinfo=UTC)


def result(volumes: list[str] | None) -> PhaseResult:
    return PhaseResult(
        status=PhaseStatus.IN_PROGRESS, started_at="2026-11-26T02:01:15Z", volumes=volumes
    )


def snap(n: int, volume: str, state: str = "pending", after: int = 90) -> Snapshot:
    return Snapshot(f"snap-{n}", volume, state, FROZEN + timedelta(seconds=after))


def test_captured_when_every_volume_has_an_initiated_snapshot_after_the_freeze() -> None:
    snapshots = {"snap-1": snap(1, "vol-b", "completed", 95), "snap-2": snap(2, "vol-a")}
    image = Image("ami-1", "pending", ("snap-1", "snap-2"))
    noted = capture.capture_of(result(["vol-a", "vol-b"]), [image], snapshots)
    assert noted == {"captured_at": "2026-11-26T02:02:50Z", "snapshot_ids": ["snap-2", "snap-1"]}


@pytest.mark.parametrize(
    ("why", "snapshots"),
    [
        ("a snapshot failed", {"snap-1": snap(1, "vol-a", "error")}),
        ("taken before the freeze", {"snap-1": snap(1, "vol-a", after=-1)}),
        ("another volume's", {"snap-1": snap(1, "vol-z")}),
        ("not described (yet)", {}),
    ],
)
def test_not_captured(why: str, snapshots: dict[str, Snapshot]) -> None:
    image = Image("ami-1", "pending", ("snap-1",))
    assert capture.capture_of(result(["vol-a"]), [image], snapshots) is None, why


def test_without_recorded_volumes_nothing_is_ever_captured() -> None:
    image = Image("ami-1", "pending", ("snap-1",))
    snapshots = {"snap-1": snap(1, "vol-a")}
    assert capture.capture_of(result(None), [image], snapshots) is None
    assert capture.capture_of(result([]), [image], snapshots) is None


def test_any_one_image_that_covers_every_volume_captures() -> None:
    partial = Image("ami-1", "pending", ("snap-1",))
    whole = Image("ami-2", "pending", ("snap-2", "snap-3"))
    snapshots = {"snap-1": snap(1, "vol-a"), "snap-2": snap(2, "vol-a"), "snap-3": snap(3, "vol-b")}
    noted = capture.capture_of(result(["vol-a", "vol-b"]), [partial, whole], snapshots)
    assert noted is not None
    assert noted["snapshot_ids"] == ["snap-2", "snap-3"]


VOLUMES = st.lists(st.sampled_from(["vol-a", "vol-b", "vol-c"]), min_size=1, unique=True)
SNAPSHOTS = st.lists(
    st.tuples(
        st.sampled_from(["vol-a", "vol-b", "vol-c", "vol-d"]),
        st.sampled_from(["pending", "completed", "error", "recoverable"]),
        st.integers(-60, 600),
    ),
    max_size=5,
)


@given(volumes=VOLUMES, taken=SNAPSHOTS)
def test_captured_exactly_when_each_volume_is_covered(
    volumes: list[str], taken: list[tuple[str, str, int]]
) -> None:
    snapshots = {f"snap-{n}": snap(n, v, state, after) for n, (v, state, after) in enumerate(taken)}
    image = Image("ami-1", "pending", tuple(snapshots))
    noted = capture.capture_of(result(volumes), [image], snapshots)
    covered = {
        s.volume_id
        for s in snapshots.values()
        if s.state in ("pending", "completed") and s.start_time >= FROZEN
    }
    assert (noted is not None) == (set(volumes) <= covered)
    if noted is not None:
        assert parse(noted["captured_at"]) >= FROZEN
        assert len(noted["snapshot_ids"]) == len(volumes)


def parse(text: object) -> datetime:
    return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# -- the options ------------------------------------------------------------------------------


def test_the_seeds_input_releases_at_capture_within_five_minutes() -> None:
    run_input = RunInput.model_validate(seed_input())
    assert run_input.release_after is ReleaseAfter.CAPTURE
    assert run_input.max_freeze_seconds == 300
    plan = [Phase.PRE_SCRIPT, Phase.STOP, Phase.BACKUP, Phase.START, Phase.POST_SCRIPT]
    assert capture.at_capture(run_input, plan)
    assert capture.freeze_budget(run_input) is None  # stop mode: no budget


def test_script_mode_has_the_budget_and_nothing_to_release_means_no_capture() -> None:
    detail = seed_input() | {"StartStopEC2Required": False, "MaxFreezeSeconds": 120}
    run_input = RunInput.model_validate(detail)
    assert capture.freeze_budget(run_input) == 120
    assert not capture.at_capture(run_input, [Phase.PRE_SCRIPT, Phase.BACKUP])
    completed = RunInput.model_validate(detail | {"ReleaseAfter": "BACKUP_COMPLETED"})
    assert not capture.at_capture(completed, [Phase.PRE_SCRIPT, Phase.BACKUP, Phase.POST_SCRIPT])


@pytest.mark.parametrize(
    "change",
    [
        {"ReleaseAfter": "SOMETIME"},
        {"ReleaseAfter": "capture"},
        {"MaxFreezeSeconds": 29},
        {"MaxFreezeSeconds": 86_401},
        {"MaxFreezeSeconds": 60.5},
        {"MaxFreezeSeconds": True},
    ],
)
def test_bad_release_options_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RunInput.model_validate(seed_input() | change)


def test_polls_back_off_after_five_minutes_to_the_reconcilers_pace() -> None:
    delays = [capture.poll_delay(n) for n in range(40)]
    assert delays[:20] == [15] * 20
    assert delays[20:26] == [30, 60, 120, 240, 300, 300]
    assert max(delays) == capture.LOOK_SECONDS
    # An hour of waiting (a job that never runs) costs a few dozen polls, not 240.
    elapsed, polls = 0, 0
    while elapsed < 3600:
        elapsed += capture.poll_delay(polls)
        polls += 1
    assert polls < 40
