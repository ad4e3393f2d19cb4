"""The state table: one DynamoDB table, its key schema defined here once.

Item keys:
    RUN#<run_id>      RUN                          the run header
    RUN#<run_id>      GROUP#<group_id>             a group
    RUN#<run_id>      INST#<group_id>#<instance>   an instance of the run
    LEASE#<instance>  LEASE                        which run holds the instance
    CMD#<command_id>  CMD                          SSM command -> run, group, phase
    JOB#<job_id>      JOB                          backup job -> run, group, instance
    PROFILE           PROFILE#<name>               a stored profile (one partition: few)
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from pydantic import BaseModel

from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import chunks, error_code, translated
from chalicelib.models.profile import Profile
from chalicelib.models.state import (
    DONE,
    GroupPhaseState,
    GroupRecord,
    InstanceRecord,
    InstanceStatus,
    Lease,
    Phase,
    PhaseResult,
    PhaseStatus,
    RunRecord,
    RunStatus,
)

PARTITION_KEY = "pk"
SORT_KEY = "sk"
TTL_ATTRIBUTE = "expires_at"

KEY_SCHEMA = [
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
]
# The sparse index of groups that need the reconciler's attention by a time: only the
# groups of active runs carry `due_pk`, so a query reads overdue groups and nothing else.
DUE_INDEX = "due"
DUE_PARTITION = "due_pk"
DUE_AT = "due_at"
DUE_VALUE = "DUE"

ATTRIBUTE_DEFINITIONS = [
    {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
    {"AttributeName": SORT_KEY, "AttributeType": "S"},
    {"AttributeName": DUE_PARTITION, "AttributeType": "S"},
    {"AttributeName": DUE_AT, "AttributeType": "N"},
]
GLOBAL_SECONDARY_INDEXES = [
    {
        "IndexName": DUE_INDEX,
        "KeySchema": [
            {"AttributeName": DUE_PARTITION, "KeyType": "HASH"},
            {"AttributeName": DUE_AT, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "KEYS_ONLY"},
    }
]


def table_definition(table_name: str) -> dict[str, Any]:
    """The CreateTable request for the state table (tests, local mode, the template)."""
    return {
        "TableName": table_name,
        "KeySchema": KEY_SCHEMA,
        "AttributeDefinitions": ATTRIBUTE_DEFINITIONS,
        "GlobalSecondaryIndexes": GLOBAL_SECONDARY_INDEXES,
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_table(client: Any, table_name: str) -> None:
    """Create the state table, wait for it, and turn its TTL on."""
    with translated("dynamodb:CreateTable"):
        client.create_table(**table_definition(table_name))
        client.get_waiter("table_exists").wait(TableName=table_name)
        client.update_time_to_live(
            TableName=table_name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )


def run_key(run_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: "RUN"}


def group_key(run_id: str, group_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: f"GROUP#{group_id}"}


def instance_key(run_id: str, group_id: str, instance_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"RUN#{run_id}", SORT_KEY: f"INST#{group_id}#{instance_id}"}


def lease_key(instance_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"LEASE#{instance_id}", SORT_KEY: "LEASE"}


def command_key(command_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"CMD#{command_id}", SORT_KEY: "CMD"}


PROFILES = "PROFILE"  # the one partition of stored profiles


def profile_key(name: str) -> dict[str, str]:
    return {PARTITION_KEY: PROFILES, SORT_KEY: f"PROFILE#{name}"}


def job_key(backup_job_id: str) -> dict[str, str]:
    return {PARTITION_KEY: f"JOB#{backup_job_id}", SORT_KEY: "JOB"}


_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def to_item(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in attributes.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


def _values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


def _dump(record: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    """A record as stored: JSON types, and no null fields (smaller items, fewer WCUs)."""
    return record.model_dump(mode="json", exclude_none=True, exclude=exclude)


def _count_name(phase: Phase | str, status: PhaseStatus | str) -> str:
    return f"n_{phase}_{status}"


class StateStore:
    """Typed reads and conditional writes of the state table."""

    def __init__(self, client: Any, table_name: str, retention_seconds: int) -> None:
        self._client = client
        self._table = table_name
        self._retention = retention_seconds

    # -- low level -----------------------------------------------------------------------

    def _get(self, key: dict[str, str]) -> dict[str, Any] | None:
        with translated("dynamodb:GetItem"):
            response = self._client.get_item(
                TableName=self._table, Key=to_item(key), ConsistentRead=True
            )
        return from_item(response["Item"]) if "Item" in response else None

    def _put(self, attributes: dict[str, Any], condition: str | None = None) -> bool:
        request: dict[str, Any] = {"TableName": self._table, "Item": to_item(attributes)}
        if condition:
            request["ConditionExpression"] = condition
        return self._conditional("dynamodb:PutItem", self._client.put_item, request)

    def _update(
        self,
        key: dict[str, str],
        update: str,
        values: dict[str, Any] | None = None,
        names: dict[str, str] | None = None,
        condition: str | None = None,
    ) -> bool:
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": to_item(key),
            "UpdateExpression": update,
        }
        if values:
            request["ExpressionAttributeValues"] = _values(values)
        if names:
            request["ExpressionAttributeNames"] = names
        if condition:
            request["ConditionExpression"] = condition
        return self._conditional("dynamodb:UpdateItem", self._client.update_item, request)

    def _transact(self, operation: str, items: list[dict[str, Any]]) -> bool:
        try:
            with translated(operation):
                self._client.transact_write_items(TransactItems=items)
        except GatewayError as exc:
            if exc.code == "TransactionCanceledException" and "ConditionalCheckFailed" in str(
                exc.message
            ):
                return False
            raise
        return True

    @staticmethod
    def _conditional(operation: str, call: Any, request: dict[str, Any]) -> bool:
        try:
            call(**request)
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            with translated(operation):
                raise
        return True

    def _query(self, partition: str, sort_prefix: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": _values({":pk": partition, ":prefix": sort_prefix}),
            "ConsistentRead": True,
        }
        with translated("dynamodb:Query"):
            while True:
                response = self._client.query(**request)
                items += [from_item(item) for item in response.get("Items", [])]
                if "LastEvaluatedKey" not in response:
                    return items
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _batch_put(self, items: list[dict[str, Any]]) -> None:
        with translated("dynamodb:BatchWriteItem"):
            for batch in chunks(items, 25):
                pending = {self._table: [{"PutRequest": {"Item": to_item(i)}} for i in batch]}
                while pending:
                    response = self._client.batch_write_item(RequestItems=pending)
                    pending = response.get("UnprocessedItems") or {}

    def expiry(self, now_epoch: int) -> int:
        """The TTL of history items written now."""
        return now_epoch + self._retention

    # -- runs ----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRecord | None:
        item = self._get(run_key(run_id))
        return RunRecord.model_validate(item) if item else None

    def put_run_if_new(self, run: RunRecord, now_epoch: int, due_at: int | None = None) -> bool:
        """Write the run header unless the run exists already (a duplicate start)."""
        attributes = run_key(run.run_id) | _dump(run) | _due(due_at)
        attributes[TTL_ATTRIBUTE] = self.expiry(now_epoch)
        return self._put(attributes, condition="attribute_not_exists(pk)")

    def activate_run(self, run: RunRecord, due_at: int) -> bool:
        """STARTING -> RUNNING, with its plan and groups; looked at again by `due_at`."""
        return self._update(
            run_key(run.run_id),
            "SET #status = :running, #plan = :plan, groups_total = :groups,"
            " groups_pending = :groups, instance_count = :count, due_at = :due",
            values={
                ":running": str(RunStatus.RUNNING),
                ":starting": str(RunStatus.STARTING),
                ":plan": [str(p) for p in run.plan],
                ":groups": run.groups_total,
                ":count": run.instance_count,
                ":due": due_at,
            },
            names={"#status": "status", "#plan": "plan"},
            condition="#status = :starting",
        )

    def reclaim_start(self, run_id: str, now_epoch: int, until: int) -> bool:
        """Take over a start whose handler died (its claim ran out)."""
        return self._update(
            run_key(run_id),
            "SET due_at = :until",
            values={
                ":until": until,
                ":now": now_epoch,
                ":starting": str(RunStatus.STARTING),
            },
            names={"#status": "status"},
            condition="#status = :starting AND due_at <= :now",
        )

    def complete_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        reason: str | None,
        at: str,
        announce_by: int,
    ) -> bool:
        """Move a RUNNING run to its final status; False if it was not RUNNING. It stays
        due by `announce_by` until `mark_announced`, so a lost announcement is made again."""
        return self._update(
            run_key(run_id),
            "SET #status = :status, #counts = :counts, finished_at = :at, #reason = :reason,"
            " due_pk = :due, due_at = :by",
            values={
                ":status": str(status),
                ":counts": counts,
                ":at": at,
                ":reason": reason,
                ":running": str(RunStatus.RUNNING),
                ":due": DUE_VALUE,
                ":by": announce_by,
            },
            names={"#status": "status", "#counts": "counts", "#reason": "reason"},
            condition="#status = :running",
        )

    def mark_announced(self, run_id: str, at: str) -> None:
        """The run's Run Completed event was put: nothing is due for it any more."""
        self._update(run_key(run_id), "SET announced_at = :at REMOVE due_pk, due_at", {":at": at})

    # -- groups and instances ------------------------------------------------------------

    def put_groups_and_instances(
        self, groups: list[GroupRecord], instances: list[InstanceRecord], now_epoch: int
    ) -> None:
        expires = {TTL_ATTRIBUTE: self.expiry(now_epoch)}
        items = [
            group_key(g.run_id, g.group_id)
            | _dump(g, exclude={"counts", "finalized"})
            | expires
            | _due(g.due_at)
            for g in groups
        ] + [
            instance_key(i.run_id, i.group_id, i.instance_id) | _dump(i) | expires
            for i in instances
        ]
        self._batch_put(items)

    def get_group(self, run_id: str, group_id: str) -> GroupRecord | None:
        item = self._get(group_key(run_id, group_id))
        return _group(item) if item else None

    def get_instance(self, run_id: str, group_id: str, instance_id: str) -> InstanceRecord | None:
        item = self._get(instance_key(run_id, group_id, instance_id))
        return InstanceRecord.model_validate(item) if item else None

    def list_instances(self, run_id: str, group_id: str | None = None) -> list[InstanceRecord]:
        prefix = "INST#" if group_id is None else f"INST#{group_id}#"
        return [InstanceRecord.model_validate(i) for i in self._query(f"RUN#{run_id}", prefix)]

    def open_phase(
        self,
        run_id: str,
        group_id: str,
        phase: Phase,
        pending: int,
        skipped: int,
        deadline: int,
        due_at: int,
        claim_until: int,
    ) -> bool:
        """REQUESTED -> OPEN for `phase`, with the number of members to wait for, the
        phase's deadline, when the reconciler should look first, and the caller's claim on
        making the side effects."""
        return self._update(
            group_key(run_id, group_id),
            f"SET phase_state = :open, pending = :pending, {_count_name(phase, 'SKIPPED')} = :sk,"
            " deadline = :deadline, due_at = :due, claim_until = :claim",
            values={
                ":claim": claim_until,
                ":open": str(GroupPhaseState.OPEN),
                ":requested": str(GroupPhaseState.REQUESTED),
                ":pending": pending,
                ":sk": skipped,
                ":phase": str(phase),
                ":deadline": deadline,
                ":due": due_at,
            },
            condition="phase = :phase AND phase_state = :requested",
        )

    def claim_phase(
        self, run_id: str, group_id: str, phase: Phase, now_epoch: int, until: int
    ) -> bool:
        """Take over making an OPEN phase's side effects, if nobody holds the claim now."""
        return self._update(
            group_key(run_id, group_id),
            "SET claim_until = :until",
            values={
                ":until": until,
                ":now": now_epoch,
                ":phase": str(phase),
                ":open": str(GroupPhaseState.OPEN),
            },
            condition="phase = :phase AND phase_state = :open AND claim_until <= :now",
        )

    def rearm(self, run_id: str, group_id: str, phase: str, due_at: int) -> None:
        """Ask the reconciler to look at a group again at `due_at`, if it is still in `phase`."""
        self._update(
            group_key(run_id, group_id),
            "SET due_at = :due",
            values={":due": due_at, ":phase": phase},
            condition="phase = :phase AND attribute_exists(due_pk)",
        )

    def cancel_run(self, run_id: str) -> bool:
        """Mark a RUNNING run cancelled; False if it is not running."""
        return self._update(
            run_key(run_id),
            "SET cancelled = :yes",
            values={":yes": True, ":running": str(RunStatus.RUNNING)},
            names={"#status": "status"},
            condition="#status = :running",
        )

    def cancel_group(self, run_id: str, group_id: str) -> None:
        self._update(group_key(run_id, group_id), "SET cancelled = :yes", values={":yes": True})

    def list_groups(self, run_id: str) -> list[GroupRecord]:
        return [_group(item) for item in self._query(f"RUN#{run_id}", "GROUP#")]

    def annotate_late_report(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, status: str, text: str
    ) -> None:
        """A report for a phase that already ended otherwise: keep it, change nothing else."""
        self._update(
            instance_key(run_id, group_id, instance_id),
            "SET phases.#phase.late_report = :text",
            values={
                ":text": text,
                ":reported": status,
                ":in_progress": str(PhaseStatus.IN_PROGRESS),
            },
            names={"#phase": str(phase), "#status": "status"},
            condition=(
                "attribute_exists(phases.#phase) AND phases.#phase.#status <> :reported"
                " AND phases.#phase.#status <> :in_progress"
            ),
        )

    def rearm_run(self, run_id: str, due_at: int) -> None:
        """Ask the reconciler to look at a run header again at `due_at`."""
        self._update(
            run_key(run_id),
            "SET due_at = :due",
            values={":due": due_at},
            condition="attribute_exists(due_pk)",
        )

    def due_items(self, now_epoch: int) -> list[tuple[str, str]]:
        """(run id, group id) of every group of an active run that is due by now; the
        group id is empty for a run header (a run still starting, or not yet finalized)."""
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "due_pk = :due AND due_at <= :now",
            "ExpressionAttributeValues": _values({":due": DUE_VALUE, ":now": now_epoch}),
        }
        due: list[tuple[str, str]] = []
        with translated("dynamodb:Query"):
            while True:
                response = self._client.query(**request)
                for item in map(from_item, response.get("Items", [])):
                    sort_key = item[SORT_KEY]
                    group_id = sort_key.removeprefix("GROUP#") if sort_key != "RUN" else ""
                    due.append((item[PARTITION_KEY].removeprefix("RUN#"), group_id))
                if "LastEvaluatedKey" not in response:
                    return due
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def set_phase_result(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        result: PhaseResult,
        expected: PhaseStatus,
    ) -> bool:
        """Replace one instance's result for `phase` if its status is `expected`."""
        return self._update(
            instance_key(run_id, group_id, instance_id),
            "SET phases.#phase = :result",
            values={":result": _dump(result), ":expected": str(expected)},
            names={"#phase": str(phase), "#status": "status"},
            condition="phases.#phase.#status = :expected",
        )

    def annotate_phase(
        self, run_id: str, group_id: str, instance_id: str, phase: Phase, **fields: str | bool
    ) -> None:
        """Record ids learnt from a side effect (command id, backup job id) on the phase."""
        names = {"#phase": str(phase)} | {f"#{k}": k for k in fields}
        sets = ", ".join(f"phases.#phase.#{k} = :{k}" for k in fields)
        self._update(
            instance_key(run_id, group_id, instance_id),
            f"SET {sets}",
            values={f":{k}": v for k, v in fields.items()},
            names=names,
        )

    def mark_terminated(self, run_id: str, group_id: str, instance_id: str) -> None:
        self._update(
            instance_key(run_id, group_id, instance_id),
            "SET #terminated = :yes",
            values={":yes": True},
            names={"#terminated": "terminated"},  # a DynamoDB reserved word
        )

    def finish_phase(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        phase: Phase,
        status: PhaseStatus,
        fields: dict[str, Any],
    ) -> bool:
        """Record a terminal status of an IN_PROGRESS phase and count it in its group.

        One transaction, so that the group's barrier counter moves exactly once per
        instance: a duplicate, stale or late report fails the condition and changes
        nothing. `fields` (reason, ended_at, ...) are set on the phase result.
        """
        values = {f":{name}": value for name, value in fields.items()}
        names = {"#phase": str(phase), "#status": "status"} | {f"#{name}": name for name in fields}
        sets = ", ".join(
            ["phases.#phase.#status = :status"]
            + [f"phases.#phase.#{name} = :{name}" for name in fields]
        )
        instance = {
            "Update": {
                "TableName": self._table,
                "Key": to_item(instance_key(run_id, group_id, instance_id)),
                "UpdateExpression": f"SET {sets}",
                "ConditionExpression": "phases.#phase.#status = :in_progress",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": _values(
                    values | {":status": str(status), ":in_progress": str(PhaseStatus.IN_PROGRESS)}
                ),
            }
        }
        group = {
            "Update": {
                "TableName": self._table,
                "Key": to_item(group_key(run_id, group_id)),
                "UpdateExpression": f"ADD pending :minus_one, {_count_name(phase, status)} :one",
                "ConditionExpression": "phase = :phase AND phase_state = :open",
                "ExpressionAttributeValues": _values(
                    {
                        ":minus_one": -1,
                        ":one": 1,
                        ":phase": str(phase),
                        ":open": str(GroupPhaseState.OPEN),
                    }
                ),
            }
        }
        return self._transact("dynamodb:TransactWriteItems", [instance, group])

    def advance_group(
        self,
        run_id: str,
        group_id: str,
        from_phase: Phase,
        to_phase: Phase | None,
        aborted: bool,
        due_at: int,
    ) -> bool:
        """Close `from_phase` of a group whose members are all terminal; enter the next.

        Only one caller wins: the condition requires the phase still OPEN with nobody
        pending.
        """
        return self._update(
            group_key(run_id, group_id),
            "SET phase = :to, phase_state = :state, aborted = :aborted, pending = :zero,"
            " due_at = :due REMOVE deadline",
            values={
                ":due": due_at,
                ":to": str(to_phase) if to_phase else DONE,
                ":state": str(GroupPhaseState.REQUESTED if to_phase else GroupPhaseState.DONE),
                ":aborted": aborted,
                ":zero": 0,
                ":from": str(from_phase),
                ":open": str(GroupPhaseState.OPEN),
            },
            condition="phase = :from AND phase_state = :open AND pending <= :zero",
        )

    def finish_group(self, run_id: str, group_id: str) -> bool:
        """Count a finished group out of its run, once."""
        group = {
            "Update": {
                "TableName": self._table,
                "Key": to_item(group_key(run_id, group_id)),
                "UpdateExpression": "SET finalized = :yes REMOVE due_pk, due_at",
                "ConditionExpression": "phase_state = :done AND attribute_not_exists(finalized)",
                "ExpressionAttributeValues": _values(
                    {":yes": True, ":done": str(GroupPhaseState.DONE)}
                ),
            }
        }
        run = {
            "Update": {
                "TableName": self._table,
                "Key": to_item(run_key(run_id)),
                "UpdateExpression": "ADD groups_pending :minus_one",
                "ExpressionAttributeValues": _values({":minus_one": -1}),
            }
        }
        return self._transact("dynamodb:TransactWriteItems", [group, run])

    def set_instance_outcome(
        self,
        run_id: str,
        group_id: str,
        instance_id: str,
        status: InstanceStatus,
        reason: str | None,
    ) -> None:
        self._update(
            instance_key(run_id, group_id, instance_id),
            "SET #status = :status, #reason = :reason",
            values={":status": str(status), ":reason": reason},
            names={"#status": "status", "#reason": "reason"},
        )

    # -- profiles ------------------------------------------------------------------------

    def put_profile(self, profile: Profile) -> None:
        """Store a profile (validated by its model), replacing one of the same name."""
        self._put(profile_key(profile.name) | _dump(profile))

    def get_profile(self, name: str) -> Profile | None:
        item = self._get(profile_key(name))
        return Profile.model_validate(item) if item else None

    def list_profiles(self) -> list[Profile]:
        return [Profile.model_validate(item) for item in self._query(PROFILES, "PROFILE#")]

    def delete_profile(self, name: str) -> bool:
        request = {
            "TableName": self._table,
            "Key": to_item(profile_key(name)),
            "ConditionExpression": "attribute_exists(pk)",
        }
        return self._conditional("dynamodb:DeleteItem", self._client.delete_item, request)

    def advance_profile(self, name: str, updated_at: str, previous: str | None, slot: str) -> bool:
        """Record `slot` as the last one dealt with, if nobody did since `previous` and the
        profile was not replaced meanwhile (a concurrent tick, or a new definition)."""
        condition = "updated_at = :updated AND " + (
            "last_slot = :previous" if previous else "attribute_not_exists(last_slot)"
        )
        values = {":slot": slot, ":updated": updated_at} | (
            {":previous": previous} if previous else {}
        )
        return self._update(profile_key(name), "SET last_slot = :slot", values, condition=condition)

    # -- leases --------------------------------------------------------------------------

    def acquire_lease(self, lease: Lease, now_epoch: int) -> Lease | None:
        """Take the lease on an instance; None if taken, else the current holder."""
        attributes = lease_key(lease.instance_id) | _dump(lease)
        attributes[TTL_ATTRIBUTE] = lease.expires_at
        taken = self._conditional(
            "dynamodb:PutItem",
            self._client.put_item,
            {
                "TableName": self._table,
                "Item": to_item(attributes),
                "ConditionExpression": (
                    "attribute_not_exists(pk) OR run_id = :run OR expires_at < :now"
                ),
                "ExpressionAttributeValues": _values({":run": lease.run_id, ":now": now_epoch}),
            },
        )
        return None if taken else self.get_lease(lease.instance_id)

    def get_lease(self, instance_id: str) -> Lease | None:
        item = self._get(lease_key(instance_id))
        return Lease.model_validate(item) if item else None

    def release_lease(self, instance_id: str, run_id: str) -> None:
        """Give the lease back, if this run still holds it."""
        request = {
            "TableName": self._table,
            "Key": to_item(lease_key(instance_id)),
            "ConditionExpression": "run_id = :run",
            "ExpressionAttributeValues": _values({":run": run_id}),
        }
        self._conditional("dynamodb:DeleteItem", self._client.delete_item, request)

    # -- correlation ---------------------------------------------------------------------

    def put_command(
        self, command_id: str, run_id: str, group_id: str, phase: Phase, now_epoch: int
    ) -> None:
        self._put(
            command_key(command_id)
            | {"run_id": run_id, "group_id": group_id, "phase": str(phase)}
            | {TTL_ATTRIBUTE: self.expiry(now_epoch)}
        )

    def get_command(self, command_id: str) -> dict[str, Any] | None:
        return self._get(command_key(command_id))

    def put_job(
        self, backup_job_id: str, run_id: str, group_id: str, instance_id: str, now_epoch: int
    ) -> None:
        self._put(
            job_key(backup_job_id)
            | {"run_id": run_id, "group_id": group_id, "instance_id": instance_id}
            | {TTL_ATTRIBUTE: self.expiry(now_epoch)}
        )

    def get_job(self, backup_job_id: str) -> dict[str, Any] | None:
        return self._get(job_key(backup_job_id))

    # -- notifications -------------------------------------------------------------------

    def mark_run_notified(self, run_id: str, at: str) -> bool:
        """Claim the run's one notification; False if it was claimed already (a repeated
        Run Completed event) or the run is not in the table."""
        return self._update(
            run_key(run_id),
            "SET notified_at = :at",
            values={":at": at},
            condition="attribute_exists(pk) AND attribute_not_exists(notified_at)",
        )

    def unmark_run_notified(self, run_id: str, at: str) -> None:
        """Give the claim back after the publish failed, so that a retry sends it."""
        self._update(
            run_key(run_id), "REMOVE notified_at", values={":at": at}, condition="notified_at = :at"
        )


def _due(due_at: int | None) -> dict[str, Any]:
    return {DUE_PARTITION: DUE_VALUE, DUE_AT: due_at} if due_at is not None else {}


def _group(item: dict[str, Any]) -> GroupRecord:
    counts = {k[2:]: int(v) for k, v in item.items() if k.startswith("n_")}
    return GroupRecord.model_validate(item | {"counts": counts})
