"""EventBridge: the events this application emits."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.errors import EventPublishError
from chalicelib.gateways.aws import chunks, translated
from chalicelib.models.events import APP_SOURCE

MAX_ENTRIES_PER_CALL = 10


class EventsGateway:
    def __init__(self, client: Any, bus_name: str) -> None:
        self._client = client
        self._bus = bus_name

    def emit(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Put each (detail-type, detail) as one event; raise if any entry was refused."""
        entries = [
            {
                "Source": APP_SOURCE,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, separators=(",", ":")),
                "EventBusName": self._bus,
            }
            for detail_type, detail in events
        ]
        for batch in chunks(entries, MAX_ENTRIES_PER_CALL):
            with translated("events:PutEvents"):
                response = self._client.put_events(Entries=batch)
            if response.get("FailedEntryCount"):
                failures = [e for e in response["Entries"] if e.get("ErrorCode")]
                raise EventPublishError(f"{len(failures)} events refused: {failures[:3]}")
