"""Which refusals of a side effect are transient (tried again later) and which are final.

One table, `RULES`, read by the side effects (`side_effects.PhaseContext.refused`), the
EC2 gateway's batching (`names_an_instance`), the phase declarations (`retry_later`) and
the reconciler (`asks_state`, `backoff_seconds`). `docs/aws-facts.md` ("Transient and
final errors, per side effect") prints the same table with its sources, and
`tests/unit/test_transient.py` fails if the two disagree.

botocore already retries throttling and 5xx errors a few times inside one call (adaptive
mode, `gateways/aws.CLIENT_CONFIG`); what reaches this table is what was still refused
after those retries, so it is tried again minutes later, not milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from chalicelib.logic.decisions import RETRY_SECONDS
from chalicelib.models.state import Phase

# The side effects, as the doc's table names them.
SEND_COMMAND = "SendCommand"
STOP_INSTANCES = "StopInstances"
START_INSTANCES = "StartInstances"
START_BACKUP_JOB = "StartBackupJob"
STOP_BACKUP_JOB = "StopBackupJob"
ANY = "any"  # every call: botocore's transient and throttling errors

SIDE_EFFECT_OF: dict[Phase, str] = {
    Phase.PRE_SCRIPT: SEND_COMMAND,
    Phase.STOP: STOP_INSTANCES,
    Phase.BACKUP: START_BACKUP_JOB,
    Phase.START: START_INSTANCES,
    Phase.POST_SCRIPT: SEND_COMMAND,
}


class Verdict(StrEnum):
    RETRY = "retry"  # transient: tried again later, with backoff, until the phase deadline
    ASK = "ask"  # ask EC2 the instance's state (reconciler), then retry or end the phase
    FAIL = "fail"  # final: the member fails the phase at once


class Scope(StrEnum):
    CALL = "call"  # the whole call was refused: every instance in it is refused alike
    INSTANCE = "instance"  # names one bad instance: the others are sent again without it


@dataclass(frozen=True)
class Rule:
    side_effect: str  # one of the names above, or ANY
    phase: str  # a Phase, or ANY
    code: str  # an AWS error code, or a botocore exception class name
    verdict: Verdict
    scope: Scope


R, A, F = Verdict.RETRY, Verdict.ASK, Verdict.FAIL
CALL, ONE = Scope.CALL, Scope.INSTANCE

RULES: tuple[Rule, ...] = (
    # botocore's standard retry lists (throttling, transient, connection errors).
    *(
        Rule(ANY, ANY, code, R, CALL)
        for code in (
            "Throttling",
            "ThrottlingException",
            "ThrottledException",
            "RequestThrottledException",
            "TooManyRequestsException",
            "RequestLimitExceeded",
            "RequestTimeout",
            "RequestTimeoutException",
            "PriorRequestNotComplete",
            "EC2ThrottledException",
            "InternalError",
            "InternalFailure",
            "InternalServerError",
            "ServiceUnavailable",
            "ServiceUnavailableException",
            "Unavailable",
            "EndpointConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ConnectionClosedError",
        )
    ),
    # SSM SendCommand.
    Rule(SEND_COMMAND, Phase.PRE_SCRIPT, "InvalidInstanceId", F, ONE),
    Rule(SEND_COMMAND, Phase.POST_SCRIPT, "InvalidInstanceId", R, ONE),
    Rule(SEND_COMMAND, ANY, "UnsupportedPlatformType", F, ONE),
    Rule(SEND_COMMAND, ANY, "DuplicateInstanceId", F, ONE),
    Rule(SEND_COMMAND, ANY, "InvalidDocument", F, CALL),
    Rule(SEND_COMMAND, ANY, "InvalidParameters", F, CALL),
    Rule(SEND_COMMAND, ANY, "InvalidOutputFolder", F, CALL),
    Rule(SEND_COMMAND, ANY, "InvalidRole", F, CALL),
    # EC2 StopInstances and StartInstances.
    Rule(STOP_INSTANCES, ANY, "IncorrectInstanceState", A, ONE),
    Rule(STOP_INSTANCES, ANY, "InvalidInstanceID.NotFound", A, ONE),
    Rule(STOP_INSTANCES, ANY, "UnsupportedOperation", F, ONE),
    Rule(START_INSTANCES, ANY, "IncorrectInstanceState", A, ONE),
    Rule(START_INSTANCES, ANY, "InvalidInstanceID.NotFound", A, ONE),
    Rule(START_INSTANCES, ANY, "InsufficientInstanceCapacity", R, ONE),
    Rule(START_INSTANCES, ANY, "InstanceLimitExceeded", R, ONE),
    Rule(START_INSTANCES, ANY, "VcpuLimitExceeded", R, ONE),
    Rule(START_INSTANCES, ANY, "UnsupportedOperation", F, ONE),
    # AWS Backup StartBackupJob and StopBackupJob.
    Rule(START_BACKUP_JOB, ANY, "LimitExceededException", R, ONE),
    Rule(START_BACKUP_JOB, ANY, "ResourceNotFoundException", F, ONE),
    Rule(START_BACKUP_JOB, ANY, "InvalidParameterValueException", F, ONE),
    Rule(START_BACKUP_JOB, ANY, "MissingParameterValueException", F, ONE),
    Rule(START_BACKUP_JOB, ANY, "InvalidRequestException", F, ONE),
    Rule(STOP_BACKUP_JOB, ANY, "InvalidRequestException", F, ONE),
    Rule(STOP_BACKUP_JOB, ANY, "ResourceNotFoundException", F, ONE),
    Rule(STOP_BACKUP_JOB, ANY, "InvalidParameterValueException", F, ONE),
    Rule(STOP_BACKUP_JOB, ANY, "MissingParameterValueException", F, ONE),
)

# A code the table does not name: final, and blamed on the call (not isolated).
UNKNOWN = Rule(ANY, ANY, "", F, CALL)

# Backoff between tries of a refused side effect (the reconciler's next look): from
# RETRY_SECONDS, doubling, up to the cap, never past the phase's deadline.
BACKOFF_CAP_SECONDS = 40 * 60


def rule(side_effect: str, code: str, phase: Phase | None = None) -> Rule:
    """What to do when `side_effect` (in `phase`) is refused with `code`: the most
    specific row wins (side effect and phase, then side effect, then any call)."""
    candidates = [
        r
        for r in RULES
        if r.code == code
        and r.side_effect in (side_effect, ANY)
        and r.phase in (ANY, *([str(phase)] if phase else []))
    ]
    if not candidates:
        return UNKNOWN
    return max(candidates, key=lambda r: (r.side_effect != ANY, r.phase != ANY))


def verdict(phase: Phase, code: str) -> Verdict:
    """The verdict on a refusal of `phase`'s side effect."""
    return rule(SIDE_EFFECT_OF[phase], code, phase).verdict


def retry_later(phase: Phase) -> frozenset[str]:
    """The codes `phase` tries again later rather than failing at once (its declaration's
    `retry_later`)."""
    side_effect = SIDE_EFFECT_OF[phase]
    return frozenset(
        r.code for r in RULES if rule(side_effect, r.code, phase).verdict is not Verdict.FAIL
    )


def asks_state(phase: Phase, code: str | None) -> bool:
    """Whether a member refused with `code` needs EC2 asked for its state before a retry."""
    return code is not None and verdict(phase, code) is Verdict.ASK


def names_an_instance(side_effect: str, code: str, phase: Phase | None = None) -> bool:
    """Whether a refusal of a many-instance call blames one instance (send the others
    again without it) rather than the call (every instance is refused alike)."""
    return rule(side_effect, code, phase).scope is Scope.INSTANCE


def backoff_seconds(retries: int) -> int:
    """How long to wait before the next try after `retries` refusals."""
    return int(min(RETRY_SECONDS * 2 ** max(retries - 1, 0), BACKOFF_CAP_SECONDS))
