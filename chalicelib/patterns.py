"""The EventBridge patterns of the handlers: what each one is subscribed to."""

from __future__ import annotations

from typing import Any

from chalicelib.models.events import APP_SOURCE, DetailType
from chalicelib.models.state import DONE

RECONCILE_EVERY_MINUTES = 5
SCHEDULER_EVERY_MINUTES = 5  # how often scheduled profiles are looked at

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
