"""What every step needs, built once per process on first use.

Operator tooling (local mode, tests) may hand in its own boto3 session and clock through
`configure`: that changes endpoints and time, never the code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from chalicelib.clock import Clock, SystemClock
from chalicelib.config import Settings, get_settings
from chalicelib.gateways import aws
from chalicelib.gateways.backup import BackupGateway
from chalicelib.gateways.ec2 import Ec2Gateway
from chalicelib.gateways.events import EventsGateway
from chalicelib.gateways.queue import CaptureQueue
from chalicelib.gateways.sns import NotificationGateway
from chalicelib.gateways.ssm import SsmGateway
from chalicelib.gateways.state_store import StateStore
from chalicelib.store import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock
    store: Store
    ec2: Ec2Gateway
    ssm: SsmGateway
    backup: BackupGateway
    events: EventsGateway
    notifications: NotificationGateway
    capture_queue: CaptureQueue

    def now_epoch(self) -> int:
        return int(self.clock.now().timestamp())


_injected: dict[str, Any] = {}


def configure(
    session: Any | None = None, clock: Clock | None = None, store: Store | None = None
) -> None:
    """Use this boto3 session, clock and state store from now on (operator tooling and
    tests: local mode's emulated AWS, virtual time, an in-memory store for big runs)."""
    _injected.clear()
    _injected.update(
        {k: v for k, v in (("session", session), ("clock", clock), ("store", store)) if v}
    )
    get_settings.cache_clear()
    services.cache_clear()


@cache
def services() -> Services:
    """The services of this process."""
    settings = get_settings()
    session = _injected.get("session") or aws.new_session(settings.region)
    return Services(
        settings=settings,
        clock=_injected.get("clock") or SystemClock(),
        store=_injected.get("store")
        or StateStore(
            aws.client(session, "dynamodb"),
            settings.table_name,
            retention_seconds=settings.record_retention_days * 86_400,
        ),
        ec2=Ec2Gateway(
            aws.client(session, "ec2"), aws.partition_of(session, settings.region), settings.region
        ),
        ssm=SsmGateway(aws.client(session, "ssm")),
        backup=BackupGateway(aws.client(session, "backup"), aws.client(session, "ec2")),
        events=EventsGateway(aws.client(session, "events"), settings.event_bus_name),
        notifications=NotificationGateway(aws.client(session, "sns")),
        capture_queue=CaptureQueue(aws.client(session, "sqs"), settings.capture_queue_url),
    )
