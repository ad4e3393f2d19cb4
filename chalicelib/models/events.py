"""Typed models of every event the application receives or emits.

AWS service events are parsed tolerantly about types (documentation samples give
numbers as strings, some omit `version`) and strictly about meaning.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from chalicelib.errors import PoisonEventError
from chalicelib.models.state import Phase, RunRecord

APP_SOURCE = "prepost-backup"


class DetailType:
    """Detail-types of the events this application emits: its public interface."""

    START_REQUESTED = "BackupSolution-PrePostScript"  # the seed's start event (received)
    RUN_STARTED = "PrePostBackup Run Started"
    PHASE_REQUESTED = "PrePostBackup Phase Requested"
    PHASE_COMPLETED = "PrePostBackup Phase Completed"
    RUN_COMPLETED = "PrePostBackup Run Completed"
    CANCEL_REQUESTED = "PrePostBackup Cancel Requested"  # received


def _as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) else value


class AwsEvent(BaseModel):
    """The EventBridge envelope; `version` may come as a number or be missing.

    The fields of Powertools' `EventBridgeModel` (held to it on every sample event by
    `tests/unit/test_events.py`), declared here because importing Powertools' parser
    models package builds some forty event models: about 150 ms of every cold start,
    most of the budget `make package` checks.
    """

    model_config = ConfigDict(defer_build=True, populate_by_name=True)

    version: Annotated[str, BeforeValidator(_as_str)] = "0"
    id: str
    source: str
    account: str
    time: datetime
    region: str
    resources: list[str]
    detail_type: str = Field(alias="detail-type")
    detail: Any
    replay_name: str | None = Field(default=None, alias="replay-name")


class _Detail(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)


class SsmInvocationDetail(_Detail):
    """`aws.ssm` / `EC2 Command Invocation Status-change Notification`."""

    command_id: str = Field(alias="command-id")
    instance_id: str = Field(alias="instance-id")
    status: str
    document_name: str | None = Field(default=None, alias="document-name")


class SsmInvocationEvent(AwsEvent):
    detail: SsmInvocationDetail


class Ec2StateDetail(_Detail):
    """`aws.ec2` / `EC2 Instance State-change Notification`."""

    instance_id: str = Field(alias="instance-id")
    state: str


class Ec2StateEvent(AwsEvent):
    detail: Ec2StateDetail


class BackupJobDetail(_Detail):
    """`aws.backup` / `Backup Job State Change` (camelCase fields)."""

    backup_job_id: str = Field(alias="backupJobId")
    state: str
    resource_arn: str | None = Field(default=None, alias="resourceArn")
    status_message: str | None = Field(default=None, alias="statusMessage")
    recovery_point_arn: str | None = Field(default=None, alias="recoveryPointArn")


class BackupJobEvent(AwsEvent):
    detail: BackupJobDetail


# A run's first Phase Requested events, when it has many groups (one per instance), go
# out as requests for up to this many groups each; the phase's handler puts the single
# requests (`phases.fan_out`), so that no one invocation puts thousands of events.
FAN_OUT_GROUPS = 500


class PhaseRequest(_Detail):
    """Detail of `PrePostBackup Phase Requested`: a group enters a phase. With
    `more_group_ids`, a request for several groups of the run at once: its handler puts
    one request for each (`group_id` included) and does nothing else."""

    run_id: str
    group_id: str
    phase: Phase
    more_group_ids: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=list, max_length=FAN_OUT_GROUPS - 1
    )


class PhaseRequestEvent(AwsEvent):
    detail: PhaseRequest


class PhaseCompleted(_Detail):
    """Detail of `PrePostBackup Phase Completed`: every member of a group is terminal."""

    run_id: str
    group_id: str
    phase: Phase
    next_phase: str  # a Phase, or DONE
    succeeded: int
    failed: int
    skipped: int
    # BACKUP at capture: members released while their jobs go on (not yet succeeded).
    released: int = 0


class PhaseCompletedEvent(AwsEvent):
    detail: PhaseCompleted


class RunCompleted(_Detail):
    """Detail of `PrePostBackup Run Completed`: a run reached its final status.

    Built from the run's record by `of`, on every path that ends a run (finished,
    rejected, a missed slot, cancelled, timed out). Only `run_id` is relied on by the
    receiver: whoever acts on it reads the run's record, so a forged or stale event can
    announce nothing the record does not say.
    """

    run_id: str = Field(min_length=1)
    status: str
    reason: str | None = None
    errors: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    instance_count: int = 0
    created_at: str | None = None
    finished_at: str | None = None
    profile: str | None = None  # the stored profile the run was started from, if any
    slot: str | None = None  # its scheduled slot, if the scheduler asked for it

    @classmethod
    def of(cls, run: RunRecord) -> RunCompleted:
        """The public event of a finished run, from its record."""
        return cls(
            run_id=run.run_id,
            status=str(run.status),
            reason=run.reason,
            errors=run.errors,
            counts=run.counts,
            instance_count=run.instance_count,
            created_at=run.created_at,
            finished_at=run.finished_at,
            profile=run.profile,
            slot=run.slot,
        )


class RunCompletedEvent(AwsEvent):
    detail: RunCompleted


Model = TypeVar("Model", bound=BaseModel)


def parse(model: type[Model], raw: Any) -> Model:
    """`raw` as `model`; an event that does not fit is poison, never retried."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise PoisonEventError(f"not a {model.__name__}: {exc.error_count()} errors") from exc


def parse_json(model: type[Model], text: str) -> Model:
    """`text` (JSON) as `model`; text that does not fit is poison, never retried."""
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise PoisonEventError(f"not a {model.__name__}: {exc.error_count()} errors") from exc


class CancelRequest(_Detail):
    """Detail of `PrePostBackup Cancel Requested`."""

    run_id: str
    reason: str | None = None
    # Set only by the app itself, fanning a cancel out to the groups of a large run, one
    # invocation each; it acts only on a group of a run that is cancelled already.
    group_id: str | None = None


class CancelRequestEvent(AwsEvent):
    detail: CancelRequest


class CaptureCheck(_Detail):
    """The body of a capture poll's SQS message: look at one group waiting for its
    members' capture (`logic/capture.py`); `poll` numbers the polls of the group, so that
    a duplicate or late message finds its number taken and does nothing."""

    run_id: str = Field(min_length=1, max_length=200)
    group_id: str = Field(min_length=1, max_length=1000)
    poll: int = Field(ge=0)
