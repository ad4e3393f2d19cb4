"""The error hierarchy. Gateways translate botocore errors into these."""

from __future__ import annotations


class PrePostError(Exception):
    """Base of every error this application raises on purpose."""


class PoisonEventError(PrePostError):
    """An event that can never be processed: logged with its id, counted, acknowledged."""


class GatewayError(PrePostError):
    """An AWS call failed. `code` is the AWS error code when there is one."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"{operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code
        self.message = message


class EventPublishError(PrePostError):
    """EventBridge refused some entries; raising makes Lambda retry the handler."""


class CorrelationPendingError(PrePostError):
    """A report arrived before its side effect was recorded; raising makes Lambda retry it."""


class ContentionError(PrePostError):
    """An item kept changing under a conditional write; raising makes Lambda retry it."""
