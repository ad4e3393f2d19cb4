"""Shared fixtures. Nothing here may reach real AWS: fake credentials, moto, emulation."""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

# Before anything imports boto3: fake credentials and a region, so a missed mock can
# never reach a real account.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
)
os.environ.pop("AWS_PROFILE", None)

from prepost.local.cloud import Behaviour, LocalCloud
from prepost.samples import load_event
from tests import policy_coverage

VAULT = "prepost-vault"


def seed_input() -> dict[str, Any]:
    """The seed README's example input, with its placeholders filled in."""
    return copy.deepcopy(load_event("start-seed-example")["detail"])


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def cloud(behaviour: Behaviour) -> Iterator[LocalCloud]:
    with LocalCloud(behaviour=behaviour) as local:
        local.create_vault(VAULT)
        yield local
        # A handler that still fails after Lambda's retries is a bug unless a test expects it.
        unexpected = [(h, repr(e)) for h, _, e in local.dead_letters]
        assert unexpected == [] or getattr(local, "expect_dead_letters", False), unexpected
        _check_policies(local)


def _check_policies(local: LocalCloud) -> None:
    """Every call a handler made is allowed by its policy file (see policy_coverage)."""
    refused = policy_coverage.check_cloud(local)
    assert refused == [], "calls the IAM policies do not allow:\n" + "\n".join(refused)


class LogLines:
    """The structured log lines the app wrote during a test, parsed."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def records(self, message: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines() if line]
        return [r for r in lines if message is None or r.get("message") == message]


@pytest.fixture
def logs(cloud: LocalCloud) -> Iterator[LogLines]:
    from chalicelib import observability

    captured = LogLines()
    logger = observability.logger()
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(logger.registered_formatter)
    logger._logger.addHandler(handler)
    try:
        yield captured
    finally:
        logger._logger.removeHandler(handler)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Lines that tests ask to be shown after the run (`record_property("summary", ...)`),
    also from xdist workers."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "summary":
                    terminalreporter.write_line(str(value))
    _report_fault_schedules(terminalreporter)
    _report_unused_permissions(terminalreporter)


def _report_fault_schedules(terminalreporter: Any) -> None:
    """One line for all the shards of the property test (tests/property/), whichever
    xdist workers ran them: each shard's report carries its counts."""
    total = {"schedules": 0, "violations": 0, "dynamodb": 0}
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "fault schedules":
                    for key, count in json.loads(value).items():
                        total[key] += count
    if total["schedules"]:
        terminalreporter.write_line(
            f"fault schedules: {total['schedules']}, invariant violations: "
            f"{total['violations']} ({total['dynamodb']} on DynamoDB)"
        )


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """The slow tests first, half of them at the head of each half of the list: xdist's
    worksteal gives each of two workers one half, and a worker out of work steals the
    tail of the other's queue, so both start on slow tests and the run ends on short ones
    (in collection order, a slow test left last kept one core idle for a minute)."""
    slow = [item for item in items if item.get_closest_marker("slow")]
    rest = [item for item in items if not item.get_closest_marker("slow")]
    first, second = slow[0::2], slow[1::2]
    fill = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:fill] + second + rest[fill:]


def pytest_configure(config: Any) -> None:
    """The controller (not an xdist worker) gives every process one folder to note the
    actions their handlers used, for the report of permissions no test used."""
    if not hasattr(config, "workerinput"):
        os.environ[policy_coverage.USED_DIR] = tempfile.mkdtemp(prefix="prepost-policy-")


def _report_unused_permissions(terminalreporter: Any) -> None:
    folder = os.environ.get(policy_coverage.USED_DIR)
    if not folder or hasattr(terminalreporter.config, "workerinput"):
        return
    used: set[tuple[str, str]] = set()
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as lines:
            used |= {tuple(json.loads(line)) for line in lines}  # type: ignore[misc]
    shutil.rmtree(folder, ignore_errors=True)
    if not used:
        return  # no functional test ran
    unused = sorted(
        f"{function}: {action}"
        for function, action in policy_coverage.allowed_actions() - used
        if action not in policy_coverage.RUNTIME_ACTIONS
    )
    terminalreporter.write_line(
        f"policy coverage: {len(used)} (function, action) pairs used; allowed but unused by "
        f"any test: {', '.join(unused) if unused else 'none'}"
    )
