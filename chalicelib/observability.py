"""The one place that owns the Powertools logger and metrics.

Both are built on first use, not at import time, so that tests and local mode can set
the environment first. Every handler goes through `middleware`, which binds the event
to the log lines and flushes the metrics at the end of the invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

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


def middleware(event: Any, get_response: Callable[[Any], Any]) -> Any:
    """Chalice middleware for every handler: log context in, metrics out."""
    log = logger()
    raw = event.to_dict() if hasattr(event, "to_dict") else {}
    log.set_correlation_id(_run_id_of(raw))
    log.append_keys(
        event_id=raw.get("id"),
        detail_type=raw.get("detail-type"),
        source=raw.get("source"),
        function_name=getattr(getattr(event, "context", None), "function_name", None),
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
        log.remove_keys(["event_id", "detail_type", "source", "function_name"])
        log.set_correlation_id(None)


def _run_id_of(raw: dict[str, Any]) -> str | None:
    detail = raw.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("run_id"), str):
        return str(detail["run_id"])
    return None
