"""The EventBridge patterns of the handlers: what each one is subscribed to, and where.

A pattern on the app's own source listens on the configured bus (where the app puts its
events and operators their start and cancel events) and names this account; a pattern on
an AWS service's source listens on the default bus, the only one AWS services put
events on. The packaged template and local mode's router both ask `listens_on`.
"""

from __future__ import annotations

from typing import Any

from chalicelib.models.events import APP_SOURCE, DetailType
from chalicelib.models.state import DONE

DEFAULT_BUS = "default"
AWS_SOURCE_PREFIX = "aws."

RECONCILE_EVERY_MINUTES = 5
SCHEDULER_EVERY_MINUTES = 5  # how often scheduled profiles are looked at
# The SQS queue of capture polls (`logic/capture.py`); the packaged template names each
# stage's own queue (`capture_queue_name`) in its place.
CAPTURE_POLLS = "prepost-backup-capture-polls"


def capture_queue_name(stage: str) -> str:
    """A stage's SQS queue of capture polls."""
    return f"prepost-backup-{stage}-capture-polls"


START_RUN: dict[str, Any] = {
    "source": [APP_SOURCE],
    "detail-type": [DetailType.START_REQUESTED],
}

SSM_INVOCATION: dict[str, Any] = {
    "source": ["aws.ssm"],
    "detail-type": ["EC2 Command Invocation Status-change Notification"],
    # In-flight statuses are filtered out here, so they cost no invocation.
    "detail": {
        "document-name": ["AWS-RunRemoteScript"],
        "status": [{"anything-but": ["Pending", "InProgress", "Delayed", "Cancelling"]}],
    },
}

EC2_STATE: dict[str, Any] = {
    "source": ["aws.ec2"],
    "detail-type": ["EC2 Instance State-change Notification"],
    "detail": {"state": ["stopped", "running", "shutting-down", "terminated"]},
}

BACKUP_JOB: dict[str, Any] = {
    "source": ["aws.backup"],
    "detail-type": ["Backup Job State Change"],
    "detail": {"state": ["COMPLETED", "FAILED", "ABORTED", "EXPIRED", "PARTIAL"]},
}

CANCEL_RUN: dict[str, Any] = {
    "source": [APP_SOURCE],
    "detail-type": [DetailType.CANCEL_REQUESTED],
}

GROUP_DONE: dict[str, Any] = {
    "source": [APP_SOURCE],
    "detail-type": [DetailType.PHASE_COMPLETED],
    "detail": {"next_phase": [DONE]},
}

RUN_COMPLETED: dict[str, Any] = {
    "source": [APP_SOURCE],
    "detail-type": [DetailType.RUN_COMPLETED],
}


def phase_requested(*phases: str) -> dict[str, Any]:
    return {
        "source": [APP_SOURCE],
        "detail-type": [DetailType.PHASE_REQUESTED],
        "detail": {"phase": list(phases)},
    }


def is_own(pattern: dict[str, Any]) -> bool:
    """True for a pattern on the app's own events, False for one on AWS service events."""
    sources = pattern.get("source")
    if sources == [APP_SOURCE]:
        return True
    if sources and all(str(s).startswith(AWS_SOURCE_PREFIX) for s in sources):
        return False
    # A rule on both, or on anything else, could not listen on one bus.
    raise ValueError(f"a pattern names {APP_SOURCE!r} alone or AWS sources only: {pattern}")


def listens_on(pattern: dict[str, Any], app_bus: str) -> str:
    """The bus the rule of `pattern` listens on: `app_bus` (the configured
    PREPOST_EVENT_BUS_NAME) for the app's own events, else the default bus."""
    return app_bus if is_own(pattern) else DEFAULT_BUS
