"""moto, made fast enough for fleets of thousands, with the same semantics.

moto 5.2.5 deep-copies every table a TransactWriteItems touches, to roll back on
failure; that makes each transaction cost as much as the whole table. Here the rollback
copy is taken of the touched items only, which is all a rollback needs.

moto 5.2.5 finds an EC2 resource's own tags by filtering every tag of the account (its
`describe_tags` with a resource-id filter): DescribeInstances over a tag, which reads each
instance's tags, is quadratic in the fleet (six minutes at 10,000 instances). Here an
instance reads its own tags from the same store, by its id.

moto 5.2.5 matches a Describe filter's values against each resource with `fnmatch`, one
value at a time: a DescribeSnapshots of 200 snapshot ids is 200 pattern matches per
snapshot of the account. Values without a wildcard are matched as a set here (what
`fnmatch` does for them: exact equality).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.dynamodb import responses as dynamodb_responses
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table
from moto.ec2 import utils as ec2_utils
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

from chalicelib.models.state_machine import TRANSACTION_SIZE


def _key_of(table: Table, operation: dict[str, Any]) -> dict[str, Any]:
    if "Key" in operation:
        return dict(operation["Key"])
    item = operation["Item"]
    key = {table.hash_key_attr: item[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = item[table.range_key_attr]
    return key


def _own_tags(self: Any) -> list[dict[str, str]]:
    """What moto's `get_tags` answers (`describe_tags` filtered to this resource's id),
    read by the id (an EC2 id is exact: no other id has it as a prefix)."""
    if not self.id:
        return []
    tags = self.ec2_backend.tags.get(self.id, {})
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    return [
        {"resource_id": self.id, "key": key, "value": value, "resource_type": kind}
        for key, value in tags.items()
    ]


@contextmanager
def fast_tags() -> Iterator[None]:
    original = TaggedEC2Resource.get_tags
    TaggedEC2Resource.get_tags = _own_tags  # type: ignore[method-assign]
    try:
        yield
    finally:
        TaggedEC2Resource.get_tags = original  # type: ignore[method-assign]


@contextmanager
def speedups() -> Iterator[None]:
    """Every speed-up of this module, for as long as the local cloud lives."""
    with fast_transactions(), fast_tags(), fast_filters():
        yield


WILDCARDS = frozenset("*?[")


@contextmanager
def fast_filters() -> Iterator[None]:
    original = ec2_utils.is_filter_matching

    def is_filter_matching(obj: Any, _filter: str, filter_value: Any) -> bool:
        if isinstance(filter_value, list) and len(filter_value) > 1:
            value = obj.get_filter_value(_filter)
            if isinstance(value, str) and not any(WILDCARDS & set(v) for v in filter_value):
                return value in set(filter_value)
        return bool(original(obj, _filter, filter_value))

    ec2_utils.is_filter_matching = is_filter_matching
    try:
        yield
    finally:
        ec2_utils.is_filter_matching = original


@contextmanager
def fast_transactions() -> Iterator[None]:
    """Also: moto 5.2.5 refuses transactions of more than 25 items, DynamoDB's limit
    until 2022; DynamoDB takes 100 now (TransactWriteItems: "groups up to 100 action
    requests"), and so does local mode."""
    original = DynamoDBBackend.transact_write_items
    moto_limit = dynamodb_responses.TRANSACTION_MAX_ITEMS
    dynamodb_responses.TRANSACTION_MAX_ITEMS = TRANSACTION_SIZE

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        snapshot = []
        for entry in transact_items:
            operation = next(iter(entry.values()))
            name = operation.get("TableName")
            if name not in self.tables:
                continue
            key = _key_of(self.tables[name], operation)
            current = self.get_item(name, key)
            snapshot.append(
                (name, key, copy.deepcopy(current.to_json()["Attributes"]) if current else None)
            )
        Table.__deepcopy__ = lambda table, memo: table  # type: ignore[attr-defined]
        try:
            original(self, transact_items)
        except Exception:
            for name, key, attributes in snapshot:
                if attributes is None:
                    if self.get_item(name, key) is not None:
                        self.delete_item(name, key)
                else:
                    self.put_item(name, attributes)
            raise
        finally:
            del Table.__deepcopy__  # type: ignore[attr-defined]

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    try:
        yield
    finally:
        DynamoDBBackend.transact_write_items = original  # type: ignore[method-assign]
        dynamodb_responses.TRANSACTION_MAX_ITEMS = moto_limit
