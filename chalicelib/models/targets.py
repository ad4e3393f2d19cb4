"""What the start step learns about each target instance, once, at the start."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TargetInstance(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    instance_id: str
    state: str  # EC2 state name when the run started
    owner_id: str  # the account, for the instance ARN
    tags: dict[str, str] = Field(default_factory=dict)
