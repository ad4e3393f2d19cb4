"""A virtual clock: a two-hour backup takes no wall time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class VirtualClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
        self.started = self._now
        # A handler runs at one virtual moment; its waits (`sleep`) and calls (`spend`)
        # pass no virtual time, only the handler's own: `monotonic` adds them up. Told to
        # `on_sleep` (the bench's ledger books the wait on the invocation).
        self._waited = 0.0
        self.on_sleep: Callable[[float], None] | None = None

    def monotonic(self) -> float:
        return self._waited

    def sleep(self, seconds: float) -> None:
        self._waited += max(seconds, 0.0)
        if self.on_sleep is not None:
            self.on_sleep(seconds)

    def spend(self, seconds: float) -> None:
        """A handler's call took `seconds` (assumed): a paced handler waits that much less
        before its next call, as it would on AWS."""
        self._waited += seconds

    def now(self) -> datetime:
        return self._now

    def advance_to(self, moment: datetime) -> None:
        if moment > self._now:
            self._now = moment

    def after(self, seconds: float) -> datetime:
        return self._now + timedelta(seconds=seconds)

    def elapsed(self) -> timedelta:
        return self._now - self.started
