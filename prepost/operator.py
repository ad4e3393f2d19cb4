"""Operator commands against a deployed prepost-backup: start, status, runs, cancel.

Region and credentials come as the AWS CLI takes them: `--region` (else `AWS_REGION`,
`AWS_DEFAULT_REGION`, the profile's region) and `--profile` (else `AWS_PROFILE`), then the
usual chain (environment, SSO, instance role); `AWS_ENDPOINT_URL` is honoured by botocore
itself. Every function takes the session `connect` made.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)
from pydantic import ValidationError

from chalicelib.errors import GatewayError
from chalicelib.gateways.state_store import StateStore, from_item
from chalicelib.logic.decisions import run_id_for
from chalicelib.models.events import APP_SOURCE, DetailType
from chalicelib.models.profile import Profile, ProfileRequest
from chalicelib.models.run_input import RunInput, validation_messages
from chalicelib.models.state import GroupRecord, InstanceRecord, RunRecord
from prepost.documents import read_object
from prepost.errors import AwsError, UsageError

# The one sentence each (README, "Operator commands").
NO_REGION = (
    "no AWS region: give --region, or set AWS_REGION or AWS_DEFAULT_REGION, or a region "
    "in your AWS profile"
)
NO_CREDENTIALS = (
    "no AWS credentials found: give --profile or set AWS_PROFILE, or set "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where a role is available"
)


def connect(region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 session with a region and credentials, as the AWS CLI would find them."""
    try:
        session = boto3.session.Session(
            profile_name=profile or None,
            region_name=region or os.environ.get("AWS_REGION") or None,
        )
    except ProfileNotFound as exc:
        raise UsageError(
            f"no AWS profile {exc.kwargs.get('profile', profile)!r} in your AWS config "
            "and credentials files"
        ) from exc
    if not session.region_name:
        raise AwsError(NO_REGION)
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # e.g. an SSO profile whose token expired
        raise AwsError(f"cannot get AWS credentials: {exc}") from exc
    if credentials is None:
        raise AwsError(NO_CREDENTIALS)
    return session


def _explain(exc: Exception, table: str | None = None) -> AwsError:
    if isinstance(exc, NoCredentialsError):
        return AwsError(NO_CREDENTIALS)
    if isinstance(exc, NoRegionError):
        return AwsError(NO_REGION)
    code = exc.code if isinstance(exc, GatewayError) else (
        exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    )  # fmt: skip
    if code == "ResourceNotFoundException" and table:
        return AwsError(
            f"table {table!r} not found in this account and region: is prepost-backup "
            "deployed here? Name the table with --table or PREPOST_TABLE_NAME"
        )
    return AwsError(str(exc))


def table_name(given: str | None) -> str:
    name = given or os.environ.get("PREPOST_TABLE_NAME")
    if not name:
        raise UsageError("name the state table with --table or PREPOST_TABLE_NAME")
    return name


def start_detail(input_path: Path) -> dict[str, Any]:
    """The start event's detail in `input_path`: a run input, or a reference to a stored
    profile (`{"Profile": "nightly"}`), checked as the app will check it."""
    detail = read_object(input_path, "a run input or a profile reference")
    model: type[RunInput] | type[ProfileRequest] = (
        ProfileRequest if "Profile" in detail else RunInput
    )
    try:
        model.model_validate(detail)
    except ValidationError as exc:  # the app would reject it: say so before sending
        what = "profile reference" if model is ProfileRequest else "run input"
        raise UsageError(
            "\n".join([f"invalid {what} in {input_path}:", *validation_messages(exc)])
        ) from exc
    return detail


def start(session: Any, detail: dict[str, Any], bus: str) -> tuple[str, str]:
    """Put a start event for `detail` (`start_detail`); (event id, run id)."""
    return _put(session, DetailType.START_REQUESTED, detail, bus)


def cancel(session: Any, run_id: str, bus: str, reason: str | None) -> str:
    """Put a cancel event for `run_id`; the event id."""
    detail = {"run_id": run_id, "reason": reason}
    return _put(session, DetailType.CANCEL_REQUESTED, detail, bus)[0]


def _put(session: Any, detail_type: str, detail: Any, bus: str) -> tuple[str, str]:
    moment = datetime.now(UTC).replace(microsecond=0)
    try:
        response = session.client("events").put_events(
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
    except (BotoCoreError, ClientError) as exc:
        raise _explain(exc) from exc
    [entry] = response["Entries"]
    if entry.get("ErrorCode"):
        raise AwsError(f"EventBridge refused the event: {entry.get('ErrorMessage')}")
    return entry["EventId"], run_id_for(entry["EventId"], moment)


def status(
    session: Any, run_id: str, table: str
) -> tuple[RunRecord, list[InstanceRecord], list[GroupRecord]]:
    """A run's record, its instances' records and its groups' records."""
    store = _store(session, table)
    try:
        run = store.get_run(run_id)
        instances = store.list_instances(run_id) if run else []
        groups = store.list_groups(run_id) if run else []
    except (BotoCoreError, ClientError, GatewayError) as exc:
        raise _explain(exc, table) from exc
    if run is None:
        raise AwsError(f"no run {run_id!r} in table {table!r}")
    return run, instances, groups


def runs(
    session: Any, table: str, limit: int, profile: str | None = None, since: str | None = None
) -> list[RunRecord]:
    """The latest runs, newest first (reads the run headers of the table); only those of
    `profile`, and only those created at `since` (a stored timestamp) or later, if given."""
    client = session.client("dynamodb")
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


def _store(session: Any, table: str) -> StateStore:
    return StateStore(session.client("dynamodb"), table, retention_seconds=0)


def _stored(call: Any, table: str) -> Any:
    try:
        return call()
    except (BotoCoreError, ClientError, GatewayError) as exc:
        raise _explain(exc, table) from exc


def profile_document(path: Path) -> dict[str, Any]:
    """The profile document in `path` (checked in full by `profile_put`)."""
    return read_object(path, "a profile document")


def profile_put(
    session: Any, name: str, document: dict[str, Any], table: str
) -> tuple[Profile, bool]:
    """Validate the profile `document` and store it as `name`; (it, replaced?)."""
    store = _store(session, table)
    previous = _stored(lambda: store.get_profile(name), table)
    stored_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        profile = Profile.from_document(name, document, stored_at, previous)
    except ValidationError as exc:
        raise UsageError("\n".join(["invalid profile:", *validation_messages(exc)])) from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    _stored(lambda: store.put_profile(profile), table)
    return profile, previous is not None


def profile_list(session: Any, table: str) -> list[Profile]:
    store = _store(session, table)
    found: list[Profile] = _stored(store.list_profiles, table)
    return found


def profile_get(session: Any, name: str, table: str) -> Profile:
    store = _store(session, table)
    profile: Profile | None = _stored(lambda: store.get_profile(name), table)
    if profile is None:
        raise AwsError(f"no profile {name!r} in table {table!r}")
    return profile


def profile_delete(session: Any, name: str, table: str) -> None:
    store = _store(session, table)
    if not _stored(lambda: store.delete_profile(name), table):
        raise AwsError(f"no profile {name!r} in table {table!r}")
