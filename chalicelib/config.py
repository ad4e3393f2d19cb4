"""Settings, parsed once from the environment that each Chalice stage sets."""

from __future__ import annotations

import os
from functools import cache

from pydantic import BaseModel, Field


class Settings(BaseModel):
    """Deployment settings. Set per stage in `.chalice/config.json`."""

    table_name: str = Field(min_length=3)
    event_bus_name: str = "default"
    region: str = "us-east-1"
    record_retention_days: int = Field(default=90, ge=1)
    lease_margin_seconds: int = Field(default=3600, ge=0)


@cache
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use."""
    env = os.environ
    return Settings(
        table_name=env.get("PREPOST_TABLE_NAME", ""),
        event_bus_name=env.get("PREPOST_EVENT_BUS_NAME", "default"),
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        record_retention_days=int(env.get("PREPOST_RECORD_RETENTION_DAYS", "90")),
        lease_margin_seconds=int(env.get("PREPOST_LEASE_MARGIN_SECONDS", "3600")),
    )
