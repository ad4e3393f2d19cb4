"""Our EventBridge envelope reads every sample event as Powertools' EventBridgeModel does."""

from __future__ import annotations

import pytest
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

from chalicelib.models.events import AwsEvent
from prepost.samples import EVENTS_DIR, load_event

SAMPLES = sorted(path.stem for path in EVENTS_DIR.glob("*.json"))
# Lambda event sources other than EventBridge deliver their own shape (SQS: `Records`).
SQS_SAMPLES = [name for name in SAMPLES if name.startswith("aws-sqs-")]
EVENTBRIDGE_SAMPLES = [name for name in SAMPLES if name not in SQS_SAMPLES]


@pytest.mark.parametrize("name", EVENTBRIDGE_SAMPLES)
def test_the_envelope_matches_powertools(name: str) -> None:
    raw = load_event(name)
    ours = AwsEvent.model_validate(raw).model_dump()
    theirs = EventBridgeModel.model_validate(raw | {"version": str(raw.get("version", "0"))})
    assert ours == theirs.model_dump()


def test_the_samples_are_many() -> None:
    assert len(SAMPLES) >= 10


@pytest.mark.parametrize("name", SQS_SAMPLES)
def test_the_sqs_samples_read_as_powertools_reads_them(name: str) -> None:
    from aws_lambda_powertools.utilities.parser.models import SqsModel

    from chalicelib.models.events import CaptureCheck, parse_json

    raw = load_event(name)
    (record,) = SqsModel.model_validate(raw).Records
    assert record.eventSource == "aws:sqs"
    assert parse_json(CaptureCheck, record.body).poll >= 0
