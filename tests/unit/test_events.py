"""Our EventBridge envelope reads every sample event as Powertools' EventBridgeModel does."""

from __future__ import annotations

import pytest
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

from chalicelib.models.events import AwsEvent
from prepost.samples import EVENTS_DIR, load_event

SAMPLES = sorted(path.stem for path in EVENTS_DIR.glob("*.json"))


@pytest.mark.parametrize("name", SAMPLES)
def test_the_envelope_matches_powertools(name: str) -> None:
    raw = load_event(name)
    ours = AwsEvent.model_validate(raw).model_dump()
    theirs = EventBridgeModel.model_validate(raw | {"version": str(raw.get("version", "0"))})
    assert ours == theirs.model_dump()


def test_the_samples_are_many() -> None:
    assert len(SAMPLES) >= 10
