"""DynamoDB for local mode: moto's own DynamoDB, called in process.

botocore still validates every request against the service model; then, instead of
serializing it to HTTP for moto to parse, and moto's answer back, the request goes
straight to moto's DynamoDB handler. Same backend, same semantics (conditions, reserved
words, transactions, item size), about eight times faster. A lock makes each request
atomic, as DynamoDB's are, when handlers run in threads.
"""

from __future__ import annotations

import json
import re
import threading
from decimal import Decimal
from typing import Any

from botocore.awsrequest import AWSResponse
from moto.dynamodb.responses import DynamoHandler

from prepost.local import fast_writes

_lock = threading.RLock()


def _keep_params(params: dict[str, Any], context: Any, **_: Any) -> None:
    """The request as the caller gave it, which moto's handler reads."""
    context["local_params"] = params


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class FastDynamoDB:
    def __init__(self, account: str, region: str) -> None:
        self._account = account
        self._region = region

    def register(self, events: Any) -> None:
        events.register("provide-client-params.dynamodb.*", _keep_params)
        events.register("before-call.dynamodb.*", self._call)

    def _call(self, model: Any, context: Any, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        handler = DynamoHandler()
        handler.current_account = self._account
        handler.region = self._region
        handler.body = params = context["local_params"]
        with _lock:
            # The quick answers (outside the `try`: an error of theirs is a bug to see)
            quick = _quick(model.name, handler.dynamodb_backend, params)
            if quick is not None:
                quick["ResponseMetadata"] = {"HTTPStatusCode": 200}
                return AWSResponse("https://localhost", 200, {}, None), quick
            try:
                result = getattr(handler, _snake(model.name))()
            except Exception as exc:  # moto's errors carry the AWS error type and status
                code = str(getattr(exc, "error_type", type(exc).__name__)).rsplit("#", 1)[-1]
                status = int(getattr(exc, "code", 400))
                message = str(getattr(exc, "message", exc))
                return AWSResponse("https://localhost", status, {}, None), {
                    "Error": {"Code": code, "Message": message},
                    "ResponseMetadata": {"HTTPStatusCode": status},
                }
        parsed = result.result if hasattr(result, "result") else json.loads(result)
        parsed = dict(parsed) if isinstance(parsed, dict) else {}
        parsed.setdefault("ResponseMetadata", {"HTTPStatusCode": 200})
        return AWSResponse("https://localhost", 200, {}, None), parsed


def _quick(operation: str, backend: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """This module's answer, where it has one; None: moto's."""
    if operation == "Query":
        return fast_query(backend, params)
    if operation == "UpdateItem" and fast_writes.ENABLED:
        return fast_writes.update_item(backend, params)
    if operation == "TransactWriteItems" and fast_writes.ENABLED:
        return fast_writes.transact_write_items(backend, params)
    return None


# The one Query shape of the state table on its keys (`StateStore._query`): moto sorts
# and sizes every item of the partition on each call, which makes a run of thousands of
# instances quadratic. Answered here from moto's own items, by sort key, in pages of
# about 1 MB as DynamoDB pages them.
PREFIX_QUERY = "pk = :pk AND begins_with(sk, :prefix)"
PAGE_BYTES = 1024 * 1024


def fast_query(backend: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """The answer to a prefix Query on the table's keys; None for any other Query."""
    if params.get("IndexName") == "due" and params.get("KeyConditionExpression") == DUE_QUERY:
        return due_query(backend, params)
    if params.get("IndexName") or params.get("KeyConditionExpression") != PREFIX_QUERY:
        return None
    if any(params.get(name) for name in ("FilterExpression", "Limit", "ScanIndexForward")):
        return None
    from moto.dynamodb.models.dynamo_type import DynamoType

    table = backend.get_table(params["TableName"])
    values = params["ExpressionAttributeValues"]
    partition = table.items.get(DynamoType(values[":pk"]), {})
    prefix = values[":prefix"]["S"]
    start = params.get("ExclusiveStartKey", {}).get("sk", {}).get("S")
    keys = sorted(
        key.value
        for key in partition
        if key.value.startswith(prefix) and (start is None or key.value > start)
    )
    items: list[dict[str, Any]] = []
    size = 0
    answer: dict[str, Any] = {"Items": items}
    for key in keys:
        item = partition[DynamoType({"S": key})].to_json()["Attributes"]
        items.append(item)
        size += len(json.dumps(item))
        if size >= PAGE_BYTES and key != keys[-1]:
            answer["LastEvaluatedKey"] = {"pk": item["pk"], "sk": item["sk"]}
            break
    answer |= {"Count": len(items), "ScannedCount": len(items)}
    return answer


# The reconciler's Query of the due index (`StateStore._due`): moto sorts every item of
# the table on each call. Answered here by one pass over the items, in the index's order
# (due_at, then the table's keys: DynamoDB leaves the order of equal sort keys open), with
# the keys only, as the index projects them.
DUE_QUERY = "due_pk = :due AND due_at <= :now"


def due_query(backend: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    if any(params.get(name) for name in ("FilterExpression", "Limit", "ScanIndexForward")):
        return None
    values = params["ExpressionAttributeValues"]
    due, now = values[":due"], values[":now"]
    if list(due) != ["S"] or list(now) != ["N"]:
        return None
    table = backend.get_table(params["TableName"])
    limit = Decimal(now["N"])
    found = []
    for partition in table.items.values():
        for item in partition.values():
            at = item.attrs.get("due_at")
            mark = item.attrs.get("due_pk")
            if mark is None or at is None or mark.type != "S" or mark.value != due["S"]:
                continue
            if at.type == "N" and Decimal(at.value) <= limit:
                found.append((Decimal(at.value), item.hash_key.value, item.range_key.value, at))
    found.sort(key=lambda entry: entry[:3])
    start = params.get("ExclusiveStartKey")
    if start:
        after = (Decimal(start["due_at"]["N"]), start["pk"]["S"], start["sk"]["S"])
        found = [entry for entry in found if entry[:3] > after]
    items = [
        {"pk": {"S": pk}, "sk": {"S": sk}, "due_pk": dict(due), "due_at": {"N": at.value}}
        for _, pk, sk, at in found
    ]
    answer: dict[str, Any] = {"Items": items[:PAGE_ITEMS_KEYS_ONLY]}
    if len(items) > PAGE_ITEMS_KEYS_ONLY:
        answer["LastEvaluatedKey"] = dict(items[PAGE_ITEMS_KEYS_ONLY - 1])
    answer |= {"Count": len(answer["Items"]), "ScannedCount": len(answer["Items"])}
    return answer


# Keys-only entries are about 100 bytes: about 10,000 fit DynamoDB's 1 MB page.
PAGE_ITEMS_KEYS_ONLY = 10_000
