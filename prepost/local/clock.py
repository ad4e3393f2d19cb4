"""A virtual clock: a two-hour backup takes no wall time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class VirtualClock:
    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
        self.started = self._now

    def now(self) -> datetime:
        return self._now

    def advance_to(self, moment: datetime) -> None:
        if moment > self._now:
            self._now = moment

    def after(self, seconds: float) -> datetime:
        return self._now + timedelta(seconds=seconds)

    def elapsed(self) -> timedelta:
        return self._now - self.started
