"""The state table as plain dicts in memory, for local mode's big runs and the property test.

moto's DynamoDB costs milliseconds per write; this costs microseconds. It has no
transition of its own: the store's methods are `chalicelib.store.TableStore`'s, and each
write is a definition of `chalicelib.models.state_machine`, applied here with DynamoDB's
semantics. `tests/property/test_store_contract.py` holds it to the DynamoDB store: the
same random sequences of operations through both give the same answers and items.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from chalicelib.errors import GatewayError
from chalicelib.models import state_machine as sm
from chalicelib.store import TableStore

_MISSING = object()
_IMMUTABLE = frozenset({str, int, float, bool, type(None), Decimal, bytes})


def _copy(value: Any) -> Any:
    """A deep copy of an item or a value in it: what `copy.deepcopy` gives for DynamoDB's
    types, six times faster (deepcopy was a tenth of a 2,000-instance run's time)."""
    kind = type(value)
    if kind is dict:
        return {key: _copy(inner) for key, inner in value.items()}
    if kind is list:
        return [_copy(inner) for inner in value]
    if kind in _IMMUTABLE:
        return value
    if kind is set:  # a set's members are strings, numbers or bytes: immutable
        return set(value)
    return copy.deepcopy(value)


class InMemoryStateStore(TableStore):
    """The store over a dict of items. `after_write`, if given, is called with the name of
    the DynamoDB operation of each write that happened (`PutItem`, `TransactWriteItems`,
    `BatchWriteItem`, ...), where local mode's faults act as they do after a real call."""

    def __init__(
        self,
        retention_seconds: int = 90 * 86400,
        after_write: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(retention_seconds)
        self._after_write = after_write
        self._partitions: dict[str, dict[str, dict[str, Any]]] = {}
        self._in_due_index: set[tuple[str, str]] = set()
        self._lock = threading.RLock()

    def items(self) -> list[dict[str, Any]]:
        """Every item, in key order (for tests and inspection)."""
        with self._lock:
            return [
                _copy(self._partitions[pk][sk])
                for pk in sorted(self._partitions)
                for sk in sorted(self._partitions[pk])
            ]

    # -- the table's primitives ----------------------------------------------------------

    def _get(self, key: sm.Key) -> dict[str, Any] | None:
        with self._lock:
            item = self._item(key)
            return _copy(item) if item is not None else None

    def _query(self, partition: str, sort_prefix: str) -> list[dict[str, Any]]:
        with self._lock:
            items = self._partitions.get(partition, {})
            return [_copy(items[sk]) for sk in sorted(items) if sk.startswith(sort_prefix)]

    def _due(self, now_epoch: int) -> list[dict[str, Any]]:
        with self._lock:
            due = [self._partitions[pk][sk] for pk, sk in self._in_due_index]
            return [
                {sm.PARTITION_KEY: item[sm.PARTITION_KEY], sm.SORT_KEY: item[sm.SORT_KEY]}
                | {sm.DUE_PARTITION: item[sm.DUE_PARTITION], sm.DUE_AT: item[sm.DUE_AT]}
                for item in due
                if item[sm.DUE_AT] <= now_epoch
            ]

    def _write(self, write: sm.Write) -> dict[str, Any] | None:
        writes = write.writes if isinstance(write, sm.Transaction) else (write,)
        with self._lock:
            current = [self._item(_key_of(w)) for w in writes]
            if not all(_holds(w.when, item) for w, item in zip(writes, current, strict=True)):
                return None
            # Every new item is made before any is stored: an invalid update writes nothing.
            after = [
                _applied(w, item, write.operation) for w, item in zip(writes, current, strict=True)
            ]
            for w, item in zip(writes, after, strict=True):
                self._store(_key_of(w), item)
        if self._after_write is not None:
            self._after_write(write.operation)
        if isinstance(write, sm.Update) and write.returns_new:
            returned: dict[str, Any] = _copy(after[0])
            return returned
        return {}

    def _put_batch(self, puts: list[sm.Put]) -> None:
        with self._lock:
            for put in puts:
                self._store(_key_of(put), _copy(put.item))
        if self._after_write is not None:
            self._after_write(sm.BATCH_OPERATION)

    # -- the dicts -----------------------------------------------------------------------

    def _item(self, key: sm.Key) -> dict[str, Any] | None:
        return self._partitions.get(key[sm.PARTITION_KEY], {}).get(key[sm.SORT_KEY])

    def _store(self, key: sm.Key, item: dict[str, Any] | None) -> None:
        pk, sk = key[sm.PARTITION_KEY], key[sm.SORT_KEY]
        partition = self._partitions.setdefault(pk, {})
        if item is None:
            partition.pop(sk, None)
        else:
            partition[sk] = item
        # DynamoDB's sparse index: an item is in it when it has both of the index's keys.
        if item is not None and sm.DUE_PARTITION in item and _is_number(item.get(sm.DUE_AT)):
            self._in_due_index.add((pk, sk))
        else:
            self._in_due_index.discard((pk, sk))


def _key_of(write: sm.Put | sm.Update | sm.Delete) -> sm.Key:
    if isinstance(write, sm.Put):
        return {
            sm.PARTITION_KEY: write.item[sm.PARTITION_KEY],
            sm.SORT_KEY: write.item[sm.SORT_KEY],
        }
    return write.key


def _applied(
    write: sm.Put | sm.Update | sm.Delete, item: dict[str, Any] | None, operation: str
) -> dict[str, Any] | None:
    """The item after `write` (None: deleted)."""
    if isinstance(write, sm.Put):
        put: dict[str, Any] = _copy(write.item)
        return put
    if isinstance(write, sm.Delete):
        return None
    new = _copy(item) if item is not None else dict(write.key)
    for path, value in write.set.items():
        parent, name = _parent(new, path, operation)
        parent[name] = _copy(value)
    for path, number in write.add.items():
        parent, name = _parent(new, path, operation)
        present = parent.get(name, 0)
        if not _is_number(present):
            raise _invalid(operation, f"ADD to {path}, which is not a number")
        parent[name] = present + number
    for path in write.remove:
        parent, name = _parent(new, path, operation)
        parent.pop(name, None)
    return new


def _parent(item: dict[str, Any], path: str, operation: str) -> tuple[dict[str, Any], str]:
    *names, last = path.split(".")
    parent: Any = item
    for name in names:
        parent = parent.get(name, _MISSING) if isinstance(parent, dict) else _MISSING
    if not isinstance(parent, dict):
        # DynamoDB: "The document path provided in the update expression is invalid".
        raise _invalid(operation, f"the document path {path} is invalid for update")
    return parent, last


def _invalid(operation: str, message: str) -> GatewayError:
    return GatewayError(f"dynamodb:{operation}", "ValidationException", message)


def _holds(condition: sm.Condition | None, item: dict[str, Any] | None) -> bool:
    """DynamoDB's reading of a condition on `item` (None: there is no item)."""
    match condition:
        case None:
            return True
        case sm.Exists(path):
            return _value(item, path) is not _MISSING
        case sm.Missing(path):
            return _value(item, path) is _MISSING
        case sm.Compare(path, op, expected):
            return _compare(_value(item, path), op, expected)
        case sm.All(parts):
            return all(_holds(part, item) for part in parts)
        case sm.AnyOf(parts):
            return any(_holds(part, item) for part in parts)
    raise TypeError(condition)


def _value(item: dict[str, Any] | None, path: str) -> Any:
    value: Any = item if item is not None else {}
    for name in path.split("."):
        value = value.get(name, _MISSING) if isinstance(value, dict) else _MISSING
    return value


def _compare(actual: Any, op: str, expected: Any) -> bool:
    """A comparison with a missing attribute, or across types, is false; `<>` is then true."""
    same_type = (_is_number(actual) and _is_number(expected)) or (
        actual is not _MISSING and type(actual) is type(expected)
    )
    if op == "=":
        return same_type and actual == expected
    if op == "<>":
        return not (same_type and actual == expected)
    if not same_type or not isinstance(actual, int | float | str):
        return False
    return bool(actual < expected) if op == "<" else bool(actual <= expected)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
