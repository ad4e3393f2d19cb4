"""UpdateItem and TransactWriteItems for local mode, at the cost of the change they make.

moto parses each update and condition expression anew, deep-copies the expression tree
and the item, and walks the tree ten times to validate it: at 10,000 instances that is
most of a run's time. The state store writes one small grammar
(`chalicelib.gateways.state_store._Expressions`): `SET p = :v, ...`, `ADD p :n, ...`,
`REMOVE p, ...` on paths of name placeholders (`#n0.#n1`), under conditions built from
`attribute_exists(p)`, `attribute_not_exists(p)`, `p <op> :v`, and parenthesised AND/OR.

Here a write in that grammar is applied to moto's own items with moto's own value
semantics (`DynamoType` comparisons and arithmetic), when it certainly succeeds: every
condition holds and nothing would make DynamoDB refuse it. Anything else (a condition
that fails, a grammar or a value this module does not know, a path whose parent is
missing, an item that would grow past the size limit) returns None, and moto answers
the request itself, errors and all. So the fast path can only ever answer "done" for a
write moto would also have done, and `tests/unit/test_fast_writes.py` compares both on
random writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from moto.dynamodb.comparisons import AttributeValue
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

ENABLED = True  # False: moto answers every write (the tests that compare both)
MAX_ITEM_BYTES = 400_000  # below moto's limit (405,000), so that moto decides near it
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a is not None and b is not None and a < b,
    "<=": lambda a, b: a is not None and b is not None and a <= b,
    ">": lambda a, b: a is not None and b is not None and a > b,
    ">=": lambda a, b: a is not None and b is not None and a >= b,
}
_TOKEN = re.compile(r"\s*(\(|\)|,|attribute_exists|attribute_not_exists|AND|OR|<>|<=|>=|=|<|>"
                    r"|#n\d+(?:\.#n\d+)*|:v\d+)")  # fmt: skip


class UnknownError(Exception):
    """Not this module's grammar, or not certain to succeed: moto decides."""


# -- parsing (cached by expression text; names and values are resolved per request) ------


def _tokens(text: str) -> list[str]:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            if text[at:].strip():
                raise UnknownError(text)
            break
        tokens.append(match.group(1))
        at = match.end()
    return tokens


@lru_cache(maxsize=4096)
def parse_condition(text: str) -> tuple[Any, ...]:
    tokens = _tokens(text)
    tree, rest = _condition(tokens)
    if rest:
        raise UnknownError(text)
    return tree


def _condition(tokens: list[str]) -> tuple[tuple[Any, ...], list[str]]:
    head, rest = tokens[0] if tokens else "", tokens[1:]
    if head == "(":
        parts, joiner = [], None
        while True:
            part, rest = _condition(rest)
            parts.append(part)
            if rest[:1] == [")"]:
                if len(parts) == 1 and parts[0][0] in ("AND", "OR"):
                    raise UnknownError("redundant parentheses")  # refused, as DynamoDB does
                return (joiner or "AND", tuple(parts)), rest[1:]
            if rest[:1] not in (["AND"], ["OR"]) or joiner not in (None, rest[0]):
                raise UnknownError(" ".join(tokens))
            joiner, rest = rest[0], rest[1:]
    if head in ("attribute_exists", "attribute_not_exists"):
        if len(rest) < 3 or rest[0] != "(" or not rest[1].startswith("#") or rest[2] != ")":
            raise UnknownError(" ".join(tokens))
        return (head, rest[1]), rest[3:]
    if head.startswith("#") and len(rest) >= 2 and rest[0] in COMPARE and rest[1][:1] == ":":
        return ("compare", head, rest[0], rest[1]), rest[2:]
    raise UnknownError(" ".join(tokens))


@dataclass(frozen=True)
class Actions:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@lru_cache(maxsize=4096)
def parse_update(text: str) -> Actions:
    clauses = re.split(r"\b(SET|ADD|REMOVE)\b", text.strip())
    if clauses[0].strip():
        raise UnknownError(text)
    found: dict[str, Any] = {}
    for keyword, body in zip(clauses[1::2], clauses[2::2], strict=True):
        if keyword in found:
            raise UnknownError(text)
        parts = [part.strip() for part in body.split(",")]
        if keyword == "SET":
            pairs = [re.fullmatch(r"(#n\d+(?:\.#n\d+)*) = (:v\d+)", p) for p in parts]
        elif keyword == "ADD":
            pairs = [re.fullmatch(r"(#n\d+(?:\.#n\d+)*) (:v\d+)", p) for p in parts]
        else:
            pairs = [re.fullmatch(r"(#n\d+(?:\.#n\d+)*)()", p) for p in parts]
        if not all(pairs):
            raise UnknownError(text)
        found[keyword] = tuple(m.groups() for m in pairs if m)
    return Actions(
        set=found.get("SET", ()),
        add=found.get("ADD", ()),
        remove=tuple(path for path, _ in found.get("REMOVE", ())),
    )


# -- evaluation on moto's items ------------------------------------------------------------


class Request:
    """One write's names and values, and the placeholders it used (all must be)."""

    def __init__(self, operation: dict[str, Any]) -> None:
        self.names: dict[str, str] = operation.get("ExpressionAttributeNames") or {}
        self.values: dict[str, Any] = operation.get("ExpressionAttributeValues") or {}
        self.used: set[str] = set()

    def path(self, placeholders: str) -> list[str]:
        parts = placeholders.split(".")
        self.used.update(parts)
        if any(part not in self.names for part in parts):
            raise UnknownError(placeholders)
        return [self.names[part] for part in parts]

    def value(self, placeholder: str) -> dict[str, Any]:
        self.used.add(placeholder)
        if placeholder not in self.values:
            raise UnknownError(placeholder)
        value: dict[str, Any] = self.values[placeholder]
        return value

    def all_used(self) -> bool:
        return self.used == set(self.names) | set(self.values)


def _lookup(attrs: dict[str, DynamoType], path: list[str]) -> DynamoType | None:
    found = attrs.get(path[0])
    for name in path[1:]:
        if found is None or not found.is_map():
            return None
        found = found.value.get(name)
    return found


def holds(tree: tuple[Any, ...], request: Request, item: Item | None) -> bool:
    attrs = item.attrs if item is not None else {}
    match tree:
        case ("AND", parts):
            results = [holds(part, request, item) for part in parts]
            return all(results)
        case ("OR", parts):
            results = [holds(part, request, item) for part in parts]
            return any(results)
        case ("attribute_exists", path):
            return _lookup(attrs, request.path(path)) is not None
        case ("attribute_not_exists", path):
            return _lookup(attrs, request.path(path)) is None
        case ("compare", path, op, placeholder):
            found = _lookup(attrs, request.path(path))
            value = request.value(placeholder)
            if len(value) != 1 or next(iter(value)) not in ("S", "N", "BOOL"):
                raise UnknownError(placeholder)
            left = found.cast_value if found is not None else None
            right = AttributeValue(value).expr(None)
            try:
                return bool(COMPARE[op](left, right))
            except TypeError as exc:  # an order between types: moto decides
                raise UnknownError(op) from exc
    raise UnknownError(repr(tree))


def _map_copy(value: DynamoType) -> DynamoType:
    copied = DynamoType.__new__(DynamoType)
    copied.type, copied.value = value.type, dict(value.value)
    return copied


def _parent(attrs: dict[str, DynamoType], path: list[str]) -> dict[str, Any]:
    """The dict holding the path's last name, its maps copied on the way (copy on write)."""
    holder: dict[str, Any] = attrs
    for name in path[:-1]:
        found = holder.get(name)
        if found is None or not found.is_map():
            raise UnknownError(".".join(path))  # DynamoDB refuses a path through nothing
        holder[name] = _map_copy(found)
        holder = holder[name].value
    return holder


def updated(table: Any, item: Item | None, actions: Actions, request: Request) -> dict[str, Any]:
    """The item's attributes after `actions` (the item itself is not changed)."""
    attrs: dict[str, Any] = dict(item.attrs) if item is not None else {}
    paths = [request.path(p) for p, _ in actions.set + actions.add]
    paths += [request.path(p) for p in actions.remove]
    indexed = {a["AttributeName"]: a["AttributeType"] for a in table.attr}
    for n, path in enumerate(paths):
        if path[0] in table.table_key_attrs or (path[0] in indexed and len(path) > 1):
            raise UnknownError(path[0])  # the table's keys cannot be updated
        if any(other[: len(path)] == path or path[: len(other)] == other
               for other in paths[n + 1 :]):  # fmt: skip
            raise UnknownError(".".join(path))  # overlapping paths are refused
    for placeholder, value in actions.set:  # an index's key: of its type, never empty
        name = request.path(placeholder)[0]
        if name in indexed:
            typed = request.value(value)
            if list(typed) != [indexed[name]] or typed[indexed[name]] in ("", b""):
                raise UnknownError(name)
    for placeholder, _ in actions.add:
        if request.path(placeholder)[0] in indexed:
            raise UnknownError(placeholder)
    for placeholder, value in actions.set:
        path = request.path(placeholder)
        _parent(attrs, path)[path[-1]] = DynamoType(request.value(value))
    for placeholder, value in actions.add:
        path = request.path(placeholder)
        amount = request.value(value)
        if list(amount) != ["N"]:
            raise UnknownError(value)
        holder = _parent(attrs, path)
        current = holder.get(path[-1]) or DynamoType({"N": "0"})
        if current.type != "N":
            raise UnknownError(placeholder)
        holder[path[-1]] = current + DynamoType(amount)
    for placeholder in actions.remove:
        path = request.path(placeholder)
        if len(path) > 1 and _lookup(attrs, path[:-1]) is None:
            raise UnknownError(placeholder)
        _parent(attrs, path).pop(path[-1], None)
    return attrs


@dataclass
class Planned:
    table: Any
    key: dict[str, Any]
    item: Item | None
    attrs: dict[str, Any]


_PLAIN_TYPES = {"S", "N", "BOOL", "NULL"}


def _plain_value(value: Any) -> bool:
    """A value moto and DynamoDB store as given: no sets (empty ones are refused), numbers
    that are numbers, maps and lists of such values."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    if kind == "M":
        return isinstance(inner, dict) and all(map(_plain_value, inner.values()))
    if kind == "L":
        return isinstance(inner, list) and all(map(_plain_value, inner))
    if kind == "N":
        return isinstance(inner, str) and re.fullmatch(r"-?\d+(\.\d+)?", inner) is not None
    return kind in _PLAIN_TYPES


def plan(backend: Any, operation: dict[str, Any]) -> Planned:
    """What one Update or Put would leave, if it certainly succeeds (else UnknownError)."""
    table = backend.get_table(operation["TableName"])
    if "Item" in operation:  # a Put: its key is in its item
        plain = all(map(_plain_value, operation["Item"].values()))
        if "UpdateExpression" in operation or not plain:
            raise UnknownError("item")
        indexed = {a["AttributeName"]: a["AttributeType"] for a in table.attr}
        for name, kind in indexed.items():
            value = operation["Item"].get(name)
            if value is not None and (list(value) != [kind] or value[kind] == ""):
                raise UnknownError(name)
        key = {name: operation["Item"].get(name) for name in table.table_key_attrs}
    else:
        key = operation["Key"]
    if set(key) != {table.hash_key_attr, table.range_key_attr} or None in key.values():
        raise UnknownError("key")
    hash_value, range_value = (
        DynamoType(key[table.hash_key_attr]),
        DynamoType(key[table.range_key_attr]),
    )
    if hash_value.type != "S" or range_value.type != "S":
        raise UnknownError("key")
    item = table.get_item(hash_value, range_value)
    request = Request(operation)
    condition = operation.get("ConditionExpression")
    if condition is not None and not holds(parse_condition(condition), request, item):
        raise UnknownError("condition")  # moto refuses it, with the reasons DynamoDB gives
    if "Item" in operation:
        attrs = {name: DynamoType(value) for name, value in operation["Item"].items()}
    else:
        attrs = updated(table, item, parse_update(operation["UpdateExpression"]), request)
    if not request.all_used():
        raise UnknownError("a declared placeholder is not used")
    size = sum(len(name.encode()) + value.size() for name, value in attrs.items())
    if size + len(hash_value.value) + len(range_value.value) > MAX_ITEM_BYTES:
        raise UnknownError("size")
    return Planned(table, key, item, attrs)


def commit(planned: Planned) -> Item:
    item = planned.item
    if item is None:
        planned.table.put_item(dict(planned.key))
        hash_key, range_key = planned.table.hash_key_attr, planned.table.range_key_attr
        item = planned.table.get_item(
            DynamoType(planned.key[hash_key]), DynamoType(planned.key[range_key])
        )
        assert item is not None
    attrs = LimitedSizeDict.__new__(LimitedSizeDict)
    dict.__init__(attrs)
    for name, value in item.attrs.items():  # the keys first, as moto keeps them
        if name in planned.key:
            dict.__setitem__(attrs, name, value)
    for name, value in planned.attrs.items():
        if name not in planned.key:
            dict.__setitem__(attrs, name, value)
    item.attrs = attrs
    return item


def put_new(planned: Planned) -> None:
    """A Put: the item as given, in place of any item of its key."""
    hash_key, range_key = planned.table.hash_key_attr, planned.table.range_key_attr
    item = Item(DynamoType(planned.key[hash_key]), DynamoType(planned.key[range_key]), {})
    attrs = LimitedSizeDict.__new__(LimitedSizeDict)
    dict.__init__(attrs)
    for name, value in planned.attrs.items():
        dict.__setitem__(attrs, name, value)
    item.attrs = attrs
    planned.table.items[item.hash_key][item.range_key] = item


_FIELDS = {"TableName", "Key", "UpdateExpression", "ConditionExpression",
           "ExpressionAttributeNames", "ExpressionAttributeValues"}  # fmt: skip


def update_item(backend: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """UpdateItem's answer, if this module is certain of it; None: ask moto."""
    if set(params) - _FIELDS - {"ReturnValues"} or "UpdateExpression" not in params:
        return None
    returns = params.get("ReturnValues", "NONE")
    if returns not in ("NONE", "ALL_NEW"):
        return None
    try:
        item = commit(plan(backend, params))
    except UnknownError:
        return None
    return {"Attributes": item.to_json()["Attributes"]} if returns == "ALL_NEW" else {}


def transact_write_items(backend: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """TransactWriteItems of Updates and Puts, if every one certainly succeeds; None: ask
    moto."""
    entries = params.get("TransactItems") or []
    # botocore fills ClientRequestToken in (idempotency), which moto does not honour either
    if set(params) - {"TransactItems", "ClientRequestToken"} or not 0 < len(entries) <= 100:
        return None
    kinds = [next(iter(entry)) for entry in entries]
    if any(len(entry) != 1 for entry in entries) or set(kinds) - {"Update", "Put"}:
        return None
    operations = [entry[kind] for entry, kind in zip(entries, kinds, strict=True)]
    fields = {"Update": _FIELDS, "Put": _FIELDS - {"Key", "UpdateExpression"} | {"Item"}}
    if any(set(op) - fields[kind] for op, kind in zip(operations, kinds, strict=True)):
        return None
    if any(kind == "Update" and "UpdateExpression" not in op
           for op, kind in zip(operations, kinds, strict=True)):  # fmt: skip
        return None
    try:
        planned = [plan(backend, op) for op in operations]
    except UnknownError:
        return None
    keys = [(one.table.name, repr(sorted(one.key.items()))) for one in planned]
    if len(set(keys)) != len(keys):
        return None  # one item twice: DynamoDB refuses the transaction
    for one, kind in zip(planned, kinds, strict=True):
        put_new(one) if kind == "Put" else commit(one)
    return {}
