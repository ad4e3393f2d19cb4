"""The table of transient and final refusals: the code and the doc agree, and read right."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.errors import GatewayError
from chalicelib.gateways.ec2 import Ec2Gateway
from chalicelib.logic import decisions, transient
from chalicelib.logic.phase_table import PHASES
from chalicelib.logic.transient import Scope, Verdict
from chalicelib.models.state import InstanceRecord, InstanceStatus, Phase, PhaseResult, PhaseStatus

DOC = Path(__file__).resolve().parents[2] / "docs" / "aws-facts.md"
SECTION = "## Transient and final errors, per side effect"


def doc_rows(text: str) -> list[tuple[str, ...]]:
    """(side effect, phase, code, verdict, scope, source) of each row of the section's table."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 6 or cells[0] in ("Side effect", "---"):
            continue
        cells[2] = cells[2].strip("`")
        rows.append(tuple(cells))
    return rows


def code_rows() -> set[tuple[str, ...]]:
    return {(r.side_effect, r.phase, r.code, str(r.verdict), str(r.scope)) for r in transient.RULES}


def test_the_doc_table_is_the_code_table() -> None:
    rows = doc_rows(DOC.read_text())
    assert {row[:5] for row in rows} == code_rows()
    assert len(rows) == len(transient.RULES)  # no row written twice
    for row in rows:
        assert re.search(r"https://\S+", row[5]), f"no source for {row[:3]}"


def test_the_table_check_can_fail() -> None:
    text = DOC.read_text().replace(
        "| StartInstances | any | `IncorrectInstanceState` | ask |",
        "| StartInstances | any | `IncorrectInstanceState` | fail |",
    )
    assert text != DOC.read_text()
    assert {row[:5] for row in doc_rows(text)} != code_rows()


@pytest.mark.parametrize(
    ("phase", "code", "expected"),
    [
        (Phase.POST_SCRIPT, "InvalidInstanceId", Verdict.RETRY),  # must be delivered
        (Phase.PRE_SCRIPT, "InvalidInstanceId", Verdict.FAIL),  # failing a freeze is safe
        (Phase.POST_SCRIPT, "ThrottlingException", Verdict.RETRY),
        (Phase.PRE_SCRIPT, "InvalidDocument", Verdict.FAIL),
        (Phase.STOP, "RequestLimitExceeded", Verdict.RETRY),
        (Phase.STOP, "IncorrectInstanceState", Verdict.ASK),
        (Phase.START, "IncorrectInstanceState", Verdict.ASK),
        (Phase.START, "InvalidInstanceID.NotFound", Verdict.ASK),
        (Phase.START, "InsufficientInstanceCapacity", Verdict.RETRY),
        (Phase.START, "EndpointConnectionError", Verdict.RETRY),
        (Phase.START, "UnsupportedOperation", Verdict.FAIL),
        (Phase.STOP, "InsufficientInstanceCapacity", Verdict.FAIL),  # a start's code only
        (Phase.BACKUP, "LimitExceededException", Verdict.RETRY),
        (Phase.BACKUP, "ResourceNotFoundException", Verdict.FAIL),
        (Phase.BACKUP, "SomethingNobodyDocumented", Verdict.FAIL),
    ],
)
def test_verdicts(phase: Phase, code: str, expected: Verdict) -> None:
    assert transient.verdict(phase, code) is expected
    assert (code in PHASES[phase].retry_later) is (expected is not Verdict.FAIL)


def test_only_errors_that_name_an_instance_are_isolated() -> None:
    send = transient.SEND_COMMAND
    assert transient.names_an_instance(send, "InvalidInstanceId", Phase.POST_SCRIPT)
    assert not transient.names_an_instance(send, "ThrottlingException", Phase.POST_SCRIPT)
    assert transient.names_an_instance(transient.START_INSTANCES, "IncorrectInstanceState")
    assert not transient.names_an_instance(transient.STOP_INSTANCES, "RequestLimitExceeded")
    assert transient.rule(send, "NoSuchCode").scope is Scope.CALL


def test_backoff_doubles_up_to_its_cap() -> None:
    waits = [transient.backoff_seconds(n) for n in range(1, 8)]
    assert waits[:4] == [300, 600, 1200, 2400]
    assert set(waits[4:]) == {transient.BACKOFF_CAP_SECONDS}
    assert transient.backoff_seconds(0) == decisions.RETRY_SECONDS  # never refused yet


class _Client:
    """EC2's StopInstances refusing every call that names one of `refused` with `code`."""

    def __init__(self, code: str, refused: set[str]) -> None:
        self.code, self.refused, self.calls = code, refused, []  # type: list[list[str]]

    def stop_instances(self, InstanceIds: list[str]) -> dict[str, Any]:  # noqa: N803
        self.calls.append(InstanceIds)
        if self.refused & set(InstanceIds):
            error = {"Error": {"Code": self.code, "Message": "refused"}}
            raise ClientError(error, "StopInstances")  # type: ignore[arg-type]
        items = [{"InstanceId": i, "CurrentState": {"Name": "stopping"}} for i in InstanceIds]
        return {"StoppingInstances": items}


def _stop(code: str, refused: set[str], ids: list[str]) -> tuple[dict[str, Any], _Client]:
    client = _Client(code, refused)
    gateway = Ec2Gateway(client, "aws", "us-east-1")
    outcome = gateway.stop(ids, lambda c: transient.names_an_instance(transient.STOP_INSTANCES, c))
    return outcome, client


def test_a_throttled_batch_is_not_split_into_single_calls() -> None:
    ids = [f"i-{n:017x}" for n in range(50)]
    outcome, client = _stop("RequestLimitExceeded", set(ids), ids)
    assert client.calls == [ids]  # one call, not 51
    assert all(isinstance(v, GatewayError) for v in outcome.values())
    assert len(outcome) == 50


def test_an_error_naming_an_instance_isolates_it() -> None:
    ids = [f"i-{n:017x}" for n in range(3)]
    outcome, client = _stop("IncorrectInstanceState", {ids[1]}, ids)
    assert len(client.calls) == 4  # the batch, then one by one
    assert isinstance(outcome[ids[1]], GatewayError)
    assert outcome[ids[0]] == outcome[ids[2]] == "stopping"


def test_a_terminated_instance_is_reported_terminated_not_stuck_stopped() -> None:
    failed = PhaseResult(status=PhaseStatus.FAILED, reason="instance terminated during the phase")
    gone = InstanceRecord(
        run_id="r",
        group_id="g",
        instance_id="i-1",
        original_state="running",
        terminated=True,
        phases={Phase.BACKUP: PhaseResult(status=PhaseStatus.SUCCEEDED), Phase.START: failed},
    )
    status, reason = decisions.instance_outcome(gone, [Phase.BACKUP, Phase.START])
    assert status is InstanceStatus.FAILED
    assert (reason or "").startswith("instance terminated during the run")
    stuck = gone.model_copy(update={"terminated": False})
    assert decisions.instance_outcome(stuck, [Phase.BACKUP, Phase.START])[0] is (
        InstanceStatus.STUCK_STOPPED
    )
