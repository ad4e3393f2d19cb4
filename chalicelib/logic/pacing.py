"""Pacing: the parts of a large group enter STOP, START and BACKUP no faster than the
account's token buckets refill, so that AWS throttles none of their calls.

EC2 limits StopInstances and StartInstances per account by the instances they name (a
bucket of 1,000, refilled 20 and 2 a second), AWS Backup StartBackupJob by calls (about 5
a second); see docs/aws-facts.md. When the parts of a group are released into one of these
phases together (at the start of the run, or at their barrier), `schedule` says when
each may go: the parts that fit in a full bucket go at once, the others wait for the
reconciler's later passes, each pass taking what the bucket refilled since (never more
than a full bucket). A part that waits stays REQUESTED, due when its turn comes; the
reconciler requests it then. A throttled call is still retried with backoff
(`transient.py`): pacing makes that rare, not impossible (other tools share the buckets).
"""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib.clock import Clock
from chalicelib.config import Settings
from chalicelib.models.state import Phase
from chalicelib.patterns import RECONCILE_EVERY_MINUTES

WINDOW_SECONDS = RECONCILE_EVERY_MINUTES * 60  # between the reconciler's passes
# The part of start_backups' timeout (240 s) its calls may take: half, as for every
# handler, less a margin for its reads and writes.
BACKUP_CALL_SECONDS = 100


@dataclass(frozen=True)
class Slot:
    """When a part may make its phase's calls (seconds from now), and how many calls a
    second it may make (None: as fast as it can; the parts of one window share a rate)."""

    offset: int
    calls_per_second: float | None = None


@dataclass(frozen=True)
class Bucket:
    burst: int  # tokens when full: what may be spent at once
    per_second: float  # tokens refilled each second
    per_call: bool = False  # a token per call (else per instance named)


def bucket(settings: Settings, phase: Phase) -> Bucket | None:
    """The bucket that paces `phase`'s side effect; None: not paced."""
    if phase is Phase.STOP:
        return Bucket(settings.ec2_stop_burst, settings.ec2_stops_per_second)
    if phase is Phase.START:
        return Bucket(settings.ec2_start_burst, settings.ec2_starts_per_second)
    if phase is Phase.BACKUP:
        rate = settings.backup_starts_per_second
        return Bucket(max(1, int(rate * BACKUP_CALL_SECONDS)), rate, per_call=True)
    return None


def schedule(settings: Settings, phase: Phase, sizes: list[int]) -> list[Slot]:
    """The slot of each part (of `sizes` members), in the order given."""
    paced = bucket(settings, phase)
    if paced is None or not sizes:
        return [Slot(0) for _ in sizes]
    refill = max(1, min(paced.burst, int(paced.per_second * WINDOW_SECONDS)))
    windows: list[list[int]] = [[]]
    room = paced.burst
    for index, size in enumerate(sizes):
        if size > room and windows[-1]:
            windows.append([])
            room = refill
        windows[-1].append(index)
        room -= size
    slots: list[Slot] = [Slot(0)] * len(sizes)
    for number, members in enumerate(windows):
        # Calls paced by the call share the rate among the parts that go together.
        rate = paced.per_second / len(members) if paced.per_call else None
        for index in members:
            slots[index] = Slot(number * WINDOW_SECONDS, rate)
    return slots


class Pacer:
    """At most `per_second` calls a second: `wait()` before each call (the first at once)."""

    def __init__(self, clock: Clock, per_second: float | None) -> None:
        self._clock = clock
        self._gap = 1 / per_second if per_second else 0.0
        self._next: float | None = None

    def wait(self) -> None:
        now = self._clock.monotonic()
        if self._next is not None and self._next > now:
            self._clock.sleep(self._next - now)
            now = self._next
        self._next = now + self._gap
