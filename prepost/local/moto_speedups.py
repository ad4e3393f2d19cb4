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

moto 5.2.5 serializes a response by asking, for every member of every structure of it, a
chain of alias providers which names the member may have on the Python object: an
instance of DescribeInstances is some sixty members times six providers. The names depend
only on the picker, the object's class, the member's shape and its parent and the key, so
here they are worked out once per such combination (a third of the time a 2,000-instance
run spent serializing).

moto 5.2.5 writes its XML answers with xmltodict, through SAX events, a third of the
time of an EC2 answer; here the same text is written directly (`unparse`, held to
xmltodict's output by tests/unit/test_moto_speedups.py).

moto 5.2.5 finds the method of each request by listing its response class's methods
(`inspect.getmembers` of classes of hundreds of methods), per request: here once per class.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from moto.core import responses as moto_responses
from moto.core import serialize as moto_serialize
from moto.core.constants import MISSING
from moto.core.utils import get_value
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
    with fast_transactions(), fast_tags(), fast_filters(), fast_attribute_picking(), fast_xml(), \
            fast_dispatch():  # fmt: skip
        yield


WILDCARDS = frozenset("*?[")


@lru_cache(maxsize=64)
def _literals(values: tuple[Any, ...]) -> frozenset[str] | None:
    """A filter's values as a set, when none holds a wildcard (asked once per filter, not
    once per resource matched)."""
    if all(isinstance(v, str) and not WILDCARDS & set(v) for v in values):
        return frozenset(values)
    return None


@contextmanager
def fast_filters() -> Iterator[None]:
    original = ec2_utils.is_filter_matching

    def is_filter_matching(obj: Any, _filter: str, filter_value: Any) -> bool:
        if isinstance(filter_value, list) and len(filter_value) > 1:
            literals = _literals(tuple(filter_value))
            if literals is not None:
                value = obj.get_filter_value(_filter)
                if isinstance(value, str):
                    return value in literals
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


@contextmanager
def fast_attribute_picking() -> Iterator[None]:
    picker = moto_serialize.AttributePicker
    original = picker.__call__
    missing = MISSING
    names: dict[tuple[Any, ...], tuple[str, ...]] = {}

    def pick(self: Any, context: Any) -> Any:
        # What moto's AttributePicker.__call__ does, with the candidate names remembered.
        obj, shape = context.obj, context.shape
        key = (type(self), type(obj), shape, getattr(shape, "parent", None), context.key)
        candidates = names.get(key)
        if candidates is None:
            candidates = names[key] = tuple(self.get_possible_keys(context))
        value = None
        for candidate in candidates:
            found = get_value(obj, candidate, missing)
            if found is not missing:
                value = found
                break
        if self.response_transformers:
            key_path = f"{context.key_path}.{context.key}"
            for transform_path, transform in self.response_transformers.items():
                if key_path.endswith(transform_path):
                    return transform(value)
        return value

    picker.__call__ = pick  # type: ignore[method-assign]
    try:
        yield
    finally:
        picker.__call__ = original  # type: ignore[method-assign]


def _text(value: Any) -> str:
    """xmltodict's `_convert_value_to_string`."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _emit(key: str, value: Any, out: list[str], short: bool) -> None:
    """xmltodict's `_emit` for moto's answers (no namespaces map, comments, preprocessor
    or pretty printing), writing what its XMLGenerator writes."""
    if not hasattr(value, "__iter__") or isinstance(
        value, (str, bytes, bytearray, memoryview, dict)
    ):
        value = [value]
    for item in value:
        if item is None:
            item = {}
        elif not isinstance(item, (dict, str)):
            item = _text(item)
        if isinstance(item, str):
            item = {"#text": item}
        cdata = None
        attributes = ""
        children = []
        for inner_key, inner in item.items():
            if inner_key == "#text":
                cdata = None if inner is None else _text(inner)
            elif isinstance(inner_key, str) and inner_key.startswith("@"):
                if inner_key == "@xmlns" and isinstance(inner, dict):
                    for prefix, uri in inner.items():
                        name = f"xmlns:{prefix}" if prefix else "xmlns"
                        attributes += f" {name}={quoteattr('' if uri is None else _text(uri))}"
                else:
                    attributes += (
                        f" {inner_key[1:]}={quoteattr('' if inner is None else _text(inner))}"
                    )
            elif not (isinstance(inner, list) and not inner):
                children.append((inner_key, inner))
        out.append(f"<{key}{attributes}")
        start = len(out)
        out.append("")
        for child_key, child in children:
            _emit(child_key, child, out, short)
        if cdata:
            out.append(escape(cdata))
        if len(out) == start + 1:
            out[start] = "/>" if short else f"></{key}>"
        else:
            out[start] = ">"
            out.append(f"</{key}>")


def unparse(
    input_dict: Any,
    output: Any = None,
    encoding: str = "utf-8",
    full_document: bool = True,
    short_empty_elements: bool = False,
    **options: Any,
) -> Any:
    """xmltodict.unparse, for the calls moto makes: anything else (an output stream,
    another encoding, pretty printing, options) is xmltodict's own."""
    import xmltodict  # type: ignore[import-untyped]

    plain = output is None and encoding == "utf-8" and not any(options.values())
    if not plain or not input_dict:
        return xmltodict.unparse(
            input_dict, output, encoding, full_document, short_empty_elements, **options
        )
    out = ['<?xml version="1.0" encoding="utf-8"?>\n'] if full_document else []
    for root, (key, value) in enumerate(input_dict.items()):
        if full_document and root:
            raise ValueError("Document must have exactly one root.")
        _emit(key, value, out, short_empty_elements)
    return "".join(out)


@contextmanager
def fast_xml() -> Iterator[None]:
    original = vars(moto_serialize)["xmltodict"]
    setattr(moto_serialize, "xmltodict", types.SimpleNamespace(unparse=unparse))  # noqa: B010
    try:
        yield
    finally:
        setattr(moto_serialize, "xmltodict", original)  # noqa: B010


@contextmanager
def fast_dispatch() -> Iterator[None]:
    original = vars(moto_responses)["method_names_from_class"]
    setattr(moto_responses, "method_names_from_class", lru_cache(maxsize=None)(original))  # noqa: B010
    try:
        yield
    finally:
        setattr(moto_responses, "method_names_from_class", original)  # noqa: B010
