"""The one place that owns the Powertools logger and metrics.

Both are built on first use, not at import time, so that tests and local mode can set
the environment first. Every handler goes through `middleware`, which binds the event
and the Lambda context to the log lines and flushes the metrics at the end of the
invocation.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Callable
from functools import cache
from typing import IO, Any, Literal, cast

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared.constants import LAMBDA_INITIALIZATION_TYPE

from chalicelib.errors import PoisonEventError

SERVICE = "prepost-backup"
NAMESPACE = "PrePostBackup"


@cache
def logger() -> Logger:
    """The structured logger; the run id is its correlation id."""
    return Logger(service=SERVICE)


@cache
def metrics() -> Metrics:
    """CloudWatch EMF metrics, flushed once per invocation by the middleware."""
    return Metrics(namespace=NAMESPACE, service=SERVICE)


class _StandardStream(io.TextIOBase):
    """`sys.stdout` or `sys.stderr` as it is at each write, not as it was when the logger
    was built: a CLI test runner swaps (and closes) them."""

    def __init__(self, name: Literal["stdout", "stderr"]) -> None:
        self.name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self.name).write(text))

    def flush(self) -> None:
        getattr(sys, self.name).flush()


def log_to(stream: Literal["stdout", "stderr"] | IO[str]) -> IO[str]:
    """Write the app's log lines to `stream` from now on: `"stderr"` in local mode, so that
    stdout carries only what a command prints (in Lambda, stdout goes to CloudWatch Logs
    like stderr). Returns the stream the lines went to before, to restore it. EMF metrics
    are printed to stdout whatever this says: local mode disables them."""
    handler = logger().logger_handler
    if not isinstance(handler, logging.StreamHandler):
        raise TypeError(f"the logger writes through {handler!r}, not a stream")
    chosen = cast(IO[str], _StandardStream(stream)) if isinstance(stream, str) else stream
    # Not `setStream`: it flushes the stream it replaces, which a test runner may have
    # closed already (the logger was built while it captured the output).
    handler.acquire()
    try:
        previous: IO[str] = handler.stream
        handler.stream = chosen
    finally:
        handler.release()
    return previous


def bind_run(run_id: str) -> None:
    """Make `run_id` the correlation id of every following log line of this invocation."""
    logger().set_correlation_id(run_id)


def count(name: str, value: int = 1) -> None:
    """Add `value` to the metric `name`."""
    metrics().add_metric(name=name, unit=MetricUnit.Count, value=value)


def seconds(name: str, value: float) -> None:
    """Record a duration in seconds as the metric `name` (e.g. `RunDurationSeconds`)."""
    metrics().add_metric(name=name, unit=MetricUnit.Seconds, value=value)


def phase_outcome(phase: str, outcome: str) -> None:
    """One metric per phase outcome, e.g. `BACKUP_SUCCEEDED`, `PRE_SCRIPT_FAILED`."""
    count(f"{phase}_{outcome}")


# The keys of Powertools' Lambda context injection (`Logger.inject_lambda_context`);
# `xray_trace_id` its formatter adds by itself, from the environment.
LAMBDA_CONTEXT_KEYS = (
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
    "cold_start",
)
_EVENT_KEYS = ("event_id", "detail_type", "source")


def middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every handler: log context in, metrics out."""
    log = logger()
    raw = event.to_dict() if hasattr(event, "to_dict") else {}
    log.set_correlation_id(_run_id_of(raw))
    log.append_keys(
        event_id=raw.get("id"),
        detail_type=raw.get("detail-type"),
        source=raw.get("source"),
        **_lambda_context_keys(getattr(event, "context", None)),
    )
    try:
        return get_response(event)
    except PoisonEventError as exc:
        # Retrying cannot help: acknowledge it, and make it visible.
        log.error("poison event dropped", event_id=raw.get("id"), error=str(exc))
        count("PoisonEvents")
        return None
    finally:
        if metrics().metric_set:  # flushing nothing only prints a warning
            metrics().flush_metrics()
            # When metrics are disabled Powertools keeps them, and they would pile up
            # until its 100-value auto-flush prints them anyway.
            metrics().clear_metrics()
        log.remove_keys([*_EVENT_KEYS, *LAMBDA_CONTEXT_KEYS])
        log.set_correlation_id(None)


def _lambda_context_keys(context: Any) -> dict[str, Any]:
    """What Powertools' Lambda context injection adds to every line, cold start included."""
    if context is None:
        return {}
    fields = vars(build_lambda_context_model(context))
    return {**fields, "cold_start": _cold_start(str(fields["function_name"]))}


# Powertools keeps one cold-start flag per process: right in Lambda, where an execution
# environment runs one function, but local mode runs every function in one process.
_warm_functions: set[str] = set()
_warm_lock = threading.Lock()


def _cold_start(function_name: str) -> bool:
    """Whether this is the first invocation of `function_name` in this process (never
    with provisioned concurrency, whose environments are initialised ahead, as
    Powertools says)."""
    if os.getenv(LAMBDA_INITIALIZATION_TYPE) == "provisioned-concurrency":
        return False
    with _warm_lock:
        cold = function_name not in _warm_functions
        _warm_functions.add(function_name)
    return cold


def reset_cold_starts() -> None:
    """Every function's next invocation is a cold start again (local mode: a new
    deployment, fresh execution environments)."""
    with _warm_lock:
        _warm_functions.clear()


def _run_id_of(raw: dict[str, Any]) -> str | None:
    detail = raw.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("run_id"), str):
        return str(detail["run_id"])
    return None
