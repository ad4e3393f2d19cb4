"""SNS: the summary of a completed run, published to the operators' topic."""

from __future__ import annotations

from typing import Any

from chalicelib.gateways.aws import translated


class NotificationGateway:
    def __init__(self, client: Any) -> None:
        self._client = client

    def publish(self, topic_arn: str, subject: str, message: str) -> str:
        """Publish one plain-text message to `topic_arn`; the SNS message id."""
        with translated("sns:Publish"):
            response = self._client.publish(TopicArn=topic_arn, Subject=subject, Message=message)
        return str(response["MessageId"])
