"""Operator commands against a deployed prepost-backup: start, status, runs, cancel.

Credentials and region come the usual boto3 way (environment, profile, SSO, instance
role); `AWS_ENDPOINT_URL` is honoured by botocore itself.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError
from pydantic import ValidationError

from chalicelib.errors import GatewayError
from chalicelib.gateways.state_store import StateStore, from_item
from chalicelib.logic.decisions import run_id_for
from chalicelib.models.events import APP_SOURCE, DetailType
from chalicelib.models.profile import Profile
from chalicelib.models.run_input import RunInput, validation_messages
from chalicelib.models.state import GroupRecord, InstanceRecord, RunRecord


class OperatorError(Exception):
    """Something the operator must fix; the message says what."""


def _explain(exc: Exception, table: str | None = None) -> OperatorError:
    if isinstance(exc, NoCredentialsError):
        return OperatorError(
            "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or run where a role is available"
        )
    if isinstance(exc, NoRegionError):
        return OperatorError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)")
    code = exc.code if isinstance(exc, GatewayError) else (
        exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    )  # fmt: skip
    if code == "ResourceNotFoundException" and table:
        return OperatorError(
            f"table {table!r} not found in this account and region: is prepost-backup "
            "deployed here? Name the table with --table or PREPOST_TABLE_NAME"
        )
    return OperatorError(str(exc))


def table_name(given: str | None) -> str:
    name = given or os.environ.get("PREPOST_TABLE_NAME")
    if not name:
        raise OperatorError("name the state table with --table or PREPOST_TABLE_NAME")
    return name


def _session() -> Any:
    return boto3.session.Session()


def start(input_path: Path, bus: str) -> tuple[str, str]:
    """Put a start event for the run input in `input_path`; (event id, run id)."""
    try:
        detail = json.loads(input_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OperatorError(f"cannot read {input_path}: {exc}") from exc
    try:
        RunInput.model_validate(detail)
    except ValidationError as exc:  # the app would reject it: say so before sending
        raise OperatorError("\n".join(["invalid run input:", *validation_messages(exc)])) from exc
    return _put(DetailType.START_REQUESTED, detail, bus)


def cancel(run_id: str, bus: str, reason: str | None) -> str:
    """Put a cancel event for `run_id`; the event id."""
    return _put(DetailType.CANCEL_REQUESTED, {"run_id": run_id, "reason": reason}, bus)[0]


def _put(detail_type: str, detail: Any, bus: str) -> tuple[str, str]:
    moment = datetime.now(UTC).replace(microsecond=0)
    try:
        response = (
            _session()
            .client("events")
            .put_events(
                Entries=[
                    {
                        "Source": APP_SOURCE,
                        "DetailType": detail_type,
                        "Detail": json.dumps(detail),
                        "EventBusName": bus,
                        "Time": moment,
                    }
                ]
            )
        )
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc) from exc
    [entry] = response["Entries"]
    if entry.get("ErrorCode"):
        raise OperatorError(f"EventBridge refused the event: {entry.get('ErrorMessage')}")
    return entry["EventId"], run_id_for(entry["EventId"], moment)


def status(run_id: str, table: str) -> tuple[RunRecord, list[InstanceRecord], list[GroupRecord]]:
    """A run's record, its instances' records and its groups' records."""
    store = StateStore(_session().client("dynamodb"), table, retention_seconds=0)
    try:
        run = store.get_run(run_id)
        instances = store.list_instances(run_id) if run else []
        groups = store.list_groups(run_id) if run else []
    except (BotoCoreError, ClientError, GatewayError) as exc:
        raise _explain(exc, table) from exc
    if run is None:
        raise OperatorError(f"no run {run_id!r} in table {table!r}")
    return run, instances, groups


def runs(
    table: str, limit: int, profile: str | None = None, since: str | None = None
) -> list[RunRecord]:
    """The latest runs, newest first (reads the run headers of the table); only those of
    `profile`, and only those created at `since` (a stored timestamp) or later, if given."""
    client = _session().client("dynamodb")
    found: list[RunRecord] = []
    conditions, values = ["sk = :run"], {":run": {"S": "RUN"}}
    if profile is not None:
        conditions.append("#profile = :profile")
        values[":profile"] = {"S": profile}
    if since is not None:  # stored timestamps sort as text
        conditions.append("created_at >= :since")
        values[":since"] = {"S": since}
    request: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": " AND ".join(conditions),
        "ExpressionAttributeValues": values,
    }
    if profile is not None:
        request["ExpressionAttributeNames"] = {"#profile": "profile"}
    try:
        while True:
            response = client.scan(**request)
            found += [RunRecord.model_validate(from_item(i)) for i in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                break
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc, table) from exc
    return sorted(found, key=lambda run: run.created_at, reverse=True)[:limit]


# -- profiles --------------------------------------------------------------------------------


def _store(table: str) -> StateStore:
    return StateStore(_session().client("dynamodb"), table, retention_seconds=0)


def _stored(call: Any, table: str) -> Any:
    try:
        return call()
    except (BotoCoreError, ClientError, GatewayError) as exc:
        raise _explain(exc, table) from exc


def profile_put(name: str, path: Path, table: str) -> tuple[Profile, bool]:
    """Validate the profile document in `path` and store it as `name`; (it, replaced?)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OperatorError(f"cannot read {path}: {exc}") from exc
    store = _store(table)
    previous = _stored(lambda: store.get_profile(name), table)
    stored_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        profile = Profile.from_document(name, document, stored_at, previous)
    except ValidationError as exc:
        raise OperatorError("\n".join(["invalid profile:", *validation_messages(exc)])) from exc
    except ValueError as exc:
        raise OperatorError(str(exc)) from exc
    _stored(lambda: store.put_profile(profile), table)
    return profile, previous is not None


def profile_list(table: str) -> list[Profile]:
    store = _store(table)
    found: list[Profile] = _stored(store.list_profiles, table)
    return found


def profile_get(name: str, table: str) -> Profile:
    store = _store(table)
    profile: Profile | None = _stored(lambda: store.get_profile(name), table)
    if profile is None:
        raise OperatorError(f"no profile {name!r} in table {table!r}")
    return profile


def profile_delete(name: str, table: str) -> None:
    store = _store(table)
    if not _stored(lambda: store.delete_profile(name), table):
        raise OperatorError(f"no profile {name!r} in table {table!r}")
