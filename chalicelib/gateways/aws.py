"""Sessions and clients. Built on first use, never at import time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.errors import GatewayError

# Adaptive retry: client-side rate limiting plus retries of throttling and transient errors.
CLIENT_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8})


def new_session(region: str) -> Any:
    """A boto3 session for `region` with the usual credential resolution."""
    return boto3.session.Session(region_name=region)


class CallMeter:
    """How many AWS calls this process has made (botocore's own retries aside): a
    handler that works through a list stops when its share is spent (the reconciler)."""

    def __init__(self) -> None:
        self.count = 0

    def tick(self, **_: Any) -> None:
        self.count += 1


CALLS = CallMeter()


@cache
def client(session: Any, service: str) -> Any:
    """A client of `service` from `session`; built once (clients are thread-safe). Its
    calls are counted in `CALLS` (a client copies the session's hooks when it is made)."""
    session.events.register("provide-client-params", CALLS.tick, unique_id="prepost-call-meter")
    return session.client(service, config=CLIENT_CONFIG)


def partition_of(session: Any, region: str) -> str:
    """The ARN partition of `region` (aws, aws-cn, aws-us-gov, ...)."""
    return str(session.get_partition_for_region(region))


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Turn botocore errors raised inside the block into `GatewayError`."""
    try:
        yield
    except ClientError as exc:
        message = str(exc.response.get("Error", {}).get("Message", exc))
        raise GatewayError(operation, error_code(exc), message) from exc
    except BotoCoreError as exc:
        raise GatewayError(operation, type(exc).__name__, str(exc)) from exc


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def each_page(client: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Pages of a paginated client call, e.g. `each_page(ec2, "describe_instances")`."""
    yield from client.get_paginator(operation).paginate(**kwargs)
