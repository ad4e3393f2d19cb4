"""The state table on DynamoDB: its key schema, defined here once, and the store over it.

The item keys and every transition are defined in `chalicelib/models/state_machine.py`;
the store's methods in `chalicelib/store.py`. This module only renders a transition as a
DynamoDB request (condition and update expressions, or `TransactWriteItems`) and makes
the calls.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from chalicelib.errors import GatewayError
from chalicelib.gateways.aws import translated
from chalicelib.models import state_machine as sm
from chalicelib.models.state_machine import (
    DUE_AT,
    DUE_INDEX,
    DUE_PARTITION,
    DUE_VALUE,
    PARTITION_KEY,
    SORT_KEY,
    TTL_ATTRIBUTE,
)
from chalicelib.store import TableStore

__all__ = [  # the key attributes are the table's: importable from here too
    "PARTITION_KEY",
    "SORT_KEY",
    "TTL_ATTRIBUTE",
    "StateStore",
    "create_table",
    "from_item",
    "request_of",
    "table_definition",
    "to_item",
]

# A transaction cancelled for a conflict is tried this many times in all, waiting up to
# CONFLICT_WAIT_SECONDS * 2**try (jittered) between tries: under a second in all.
CONFLICT_TRIES = 6
CONFLICT_WAIT_SECONDS = 0.005

KEY_SCHEMA = [
    {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
    {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
]
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
    return {k: _serialized(v) for k, v in attributes.items() if v is not None}


def _serialized(value: Any) -> Any:
    """A value in DynamoDB's form; a float as a number (boto3 takes only Decimals)."""
    return _serializer.serialize(_decimals(value))


def _decimals(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decimals(v) for v in value]
    return value


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_deserializer.deserialize(v)) for k, v in item.items()}


class _Expressions:
    """The expressions of one request: each attribute name and value gets a placeholder
    (so that no reserved word needs care), declared only if used, as DynamoDB requires."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._values: dict[str, Any] = {}

    def path(self, path: str) -> str:
        return ".".join(self._name(part) for part in path.split("."))

    def _name(self, name: str) -> str:
        if name not in self._names:
            self._names[name] = f"#n{len(self._names)}"
        return self._names[name]

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self._values)}"
        self._values[placeholder] = _serialized(value)
        return placeholder

    def condition(self, condition: sm.Condition) -> str:
        match condition:
            case sm.Exists(path):
                return f"attribute_exists({self.path(path)})"
            case sm.Missing(path):
                return f"attribute_not_exists({self.path(path)})"
            case sm.Compare(path, op, value):
                return f"{self.path(path)} {op} {self.value(value)}"
            case sm.All(parts):
                return "(" + " AND ".join(self.condition(p) for p in parts) + ")"
            case sm.AnyOf(parts):
                return "(" + " OR ".join(self.condition(p) for p in parts) + ")"
        raise TypeError(condition)

    def update(self, update: sm.Update) -> str:
        clauses = []
        if update.set:
            sets = (f"{self.path(p)} = {self.value(v)}" for p, v in update.set.items())
            clauses.append("SET " + ", ".join(sets))
        if update.add:
            adds = (f"{self.path(p)} {self.value(n)}" for p, n in update.add.items())
            clauses.append("ADD " + ", ".join(adds))
        if update.remove:
            clauses.append("REMOVE " + ", ".join(self.path(p) for p in update.remove))
        return " ".join(clauses)

    def attributes(self) -> dict[str, Any]:
        """The placeholders' declarations for the request."""
        declared: dict[str, Any] = {}
        if self._names:
            declared["ExpressionAttributeNames"] = {v: k for k, v in self._names.items()}
        if self._values:
            declared["ExpressionAttributeValues"] = self._values
        return declared


def request_of(table: str, write: sm.Put | sm.Update | sm.Delete) -> dict[str, Any]:
    """The PutItem, UpdateItem or DeleteItem request (or transaction item) of `write`."""
    expressions = _Expressions()
    request: dict[str, Any] = {"TableName": table}
    if isinstance(write, sm.Put):
        request["Item"] = to_item(write.item)
    else:
        request["Key"] = to_item(write.key)
    if isinstance(write, sm.Update):
        request["UpdateExpression"] = expressions.update(write)
    if write.when is not None:
        request["ConditionExpression"] = expressions.condition(write.when)
    return request | expressions.attributes()


class StateStore(TableStore):
    """The store over the DynamoDB state table (`chalicelib.store.Store`)."""

    def __init__(self, client: Any, table_name: str, retention_seconds: int) -> None:
        super().__init__(retention_seconds)
        self._client = client
        self._table = table_name

    def _get(self, key: sm.Key) -> dict[str, Any] | None:
        with translated("dynamodb:GetItem"):
            response = self._client.get_item(
                TableName=self._table, Key=to_item(key), ConsistentRead=True
            )
        return from_item(response["Item"]) if "Item" in response else None

    def _query(self, partition: str, sort_prefix: str) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": to_item({":pk": partition, ":prefix": sort_prefix}),
            "ConsistentRead": True,
        }
        return self._pages(request)

    def _due(self, now_epoch: int) -> list[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": DUE_INDEX,
            "KeyConditionExpression": "due_pk = :due AND due_at <= :now",
            "ExpressionAttributeValues": to_item({":due": DUE_VALUE, ":now": now_epoch}),
        }
        return self._pages(request)

    def _pages(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        with translated("dynamodb:Query"):
            while True:
                response = self._client.query(**request)
                items += [from_item(item) for item in response.get("Items", [])]
                if "LastEvaluatedKey" not in response:
                    return items
                request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _write(self, write: sm.Write) -> dict[str, Any] | None:
        """Apply `write`. A transaction cancelled for a conflict (another request on one of
        its items at that moment: many results of one group arriving together) is tried
        again after a short, growing, jittered wait: a conflict is contention, not a
        failure; only after `CONFLICT_TRIES` does it reach the handler (Lambda retries)."""
        for attempt in range(1, CONFLICT_TRIES + 1):
            try:
                return self._write_once(write)
            except GatewayError as exc:
                if not _conflicted(exc) or attempt == CONFLICT_TRIES:
                    raise
                time.sleep(random.uniform(0, CONFLICT_WAIT_SECONDS * 2**attempt))
        raise AssertionError("unreachable")

    def _write_once(self, write: sm.Write) -> dict[str, Any] | None:
        operation = f"dynamodb:{write.operation}"
        try:
            with translated(operation):
                if isinstance(write, sm.Transaction):
                    kinds = {sm.Put: "Put", sm.Update: "Update", sm.Delete: "Delete"}
                    items = [{kinds[type(w)]: request_of(self._table, w)} for w in write.writes]
                    self._client.transact_write_items(TransactItems=items)
                    return {}
                request = request_of(self._table, write)
                if isinstance(write, sm.Put):
                    self._client.put_item(**request)
                elif isinstance(write, sm.Delete):
                    self._client.delete_item(**request)
                elif write.returns_new:
                    response = self._client.update_item(**request, ReturnValues="ALL_NEW")
                    return from_item(response["Attributes"])
                else:
                    self._client.update_item(**request)
                return {}
        except GatewayError as exc:
            if _refused(exc):
                return None
            raise

    def _put_batch(self, puts: list[sm.Put]) -> None:
        pending = {self._table: [{"PutRequest": {"Item": to_item(p.item)}} for p in puts]}
        with translated(f"dynamodb:{sm.BATCH_OPERATION}"):
            while pending:
                response = self._client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}


def _conflicted(exc: GatewayError) -> bool:
    """A transaction cancelled because another request touched one of its items."""
    return exc.code == "TransactionCanceledException" and "TransactionConflict" in exc.message


def _refused(exc: GatewayError) -> bool:
    """A precondition did not hold (one write's, or one item's of a transaction)."""
    if exc.code == "ConditionalCheckFailedException":
        return True
    return exc.code == "TransactionCanceledException" and "ConditionalCheckFailed" in exc.message
