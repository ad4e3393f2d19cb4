"""SQS: the delayed messages that pace the capture polls (`logic/capture.py`)."""

from __future__ import annotations

import json
from typing import Any

from chalicelib.gateways.aws import translated

# SQS delays a message by at most 15 minutes (DelaySeconds: 0 to 900).
MAX_DELAY_SECONDS = 900


class CaptureQueue:
    """The queue whose messages ask `check_capture` to look at one group, later."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self.url = url

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def send(self, body: dict[str, Any], delay_seconds: int) -> None:
        """Deliver `body` to the queue's handler in `delay_seconds` (0 to 900)."""
        delay = max(0, min(MAX_DELAY_SECONDS, delay_seconds))
        with translated("sqs:SendMessage"):
            self._client.send_message(
                QueueUrl=self.url,
                MessageBody=json.dumps(body, separators=(",", ":")),
                DelaySeconds=delay,
            )
