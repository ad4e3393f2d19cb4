"""What the handlers of a local run cost, as AWS would bill and limit it: the bench's books.

Attached to a `LocalCloud` (`cloud.ledger = Ledger()`), it is told of every AWS call a
handler makes, in which invocation, and of every phase a group enters. From that it keeps:

- the AWS calls of each invocation (the largest number is what item 1 of the bounded-work
  design limits), and an estimate of each invocation's duration from assumed latencies;
- the writes to each item of the state table, per phase of the group the item belongs to
  (a run header, lease or correlation item: the furthest phase any group of the run is
  in), the measure of a hot item;
- DynamoDB capacity units, by DynamoDB's rules: a write 1 WCU per KB of the larger of the
  item before and after (2 in a transaction), a consistent read 1 RCU per 4 KB read.

Item sizes are DynamoDB's rule applied to the wire format (attribute names and values in
bytes, numbers about one byte per two digits); close enough to count units, not exact.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}
READS = {"GetItem", "Query", "Scan", "BatchGetItem"}
# Assumed latency of one call from Lambda, in seconds, by service (then by operation):
# typical figures for calls inside one region, not measurements; the estimate of an
# invocation's duration is the sum of its calls' (calls are made one after another).
LATENCY_SECONDS = {
    "dynamodb": 0.01,
    "events": 0.03,
    "ssm": 0.1,
    "ec2": 0.2,
    "backup": 0.3,
    "sns": 0.05,
}
DEFAULT_LATENCY_SECONDS = 0.1
RUN_LEVEL = "RUN"  # items of no group: attributed to the run's furthest phase


@dataclass
class Invocation:
    handler: str
    calls: Counter[str] = field(default_factory=Counter)  # "service:Operation" -> n
    seconds: float = 0.0


@dataclass
class Ledger:
    invocations: dict[int, Invocation] = field(default_factory=dict)
    # (partition key, sort key, phase) -> writes to that item while its group was in phase
    item_writes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    capacity: Counter[str] = field(default_factory=Counter)  # "read" / "write" units
    _group_phase: dict[tuple[str, str], str] = field(default_factory=dict)
    _run_phase: dict[str, str] = field(default_factory=dict)
    _order: dict[str, int] = field(default_factory=dict)

    # -- what the cloud tells it ------------------------------------------------------------

    def call(
        self, invocation: int | None, handler: str | None, service: str, operation: str
    ) -> None:
        if invocation is None or handler is None:
            return  # the emulation's own calls
        entry = self.invocations.setdefault(invocation, Invocation(handler))
        entry.calls[f"{service}:{operation}"] += 1
        entry.seconds += LATENCY_SECONDS.get(service, DEFAULT_LATENCY_SECONDS)

    def wait(self, invocation: int | None, seconds: float) -> None:
        """A handler waited `seconds` (paced calls): part of its invocation's duration."""
        entry = self.invocations.get(invocation) if invocation is not None else None
        if entry is not None:
            entry.seconds += seconds

    def phase_entered(self, run_id: str, group_id: str, phase: str) -> None:
        """A group entered `phase` (its Phase Requested, or DONE)."""
        self._group_phase[(run_id, group_id)] = phase
        rank = self._order.setdefault(phase, len(self._order))
        furthest = self._run_phase.get(run_id)
        if furthest is None or rank > self._order[furthest]:
            self._run_phase[run_id] = phase

    def dynamodb_write(self, operation: str, params: dict[str, Any], sizes: list[int]) -> None:
        """A write call, with the size in bytes of each item it wrote (after the write)."""
        keys = list(written_keys(operation, params))
        for pk, sk in keys:
            self.item_writes[(pk, sk, self._phase_of(pk, sk))] += 1
        factor = 2 if operation == "TransactWriteItems" else 1
        self.capacity["write"] += factor * sum(max(1, math.ceil(s / 1024)) for s in sizes)

    def dynamodb_read(self, operation: str, parsed: dict[str, Any]) -> None:
        if operation == "GetItem":
            items = [parsed["Item"]] if parsed.get("Item") else []
        else:
            items = parsed.get("Items", [])
        self.capacity["read"] += max(1, math.ceil(sum(map(item_size, items)) / 4096))

    # -- what the bench reads -------------------------------------------------------------

    def max_calls_per_invocation(self) -> tuple[int, str]:
        """The most AWS calls any one invocation made, and its handler."""
        top = max(self.invocations.values(), key=lambda i: sum(i.calls.values()), default=None)
        return (sum(top.calls.values()), top.handler) if top else (0, "")

    def longest_invocation(self) -> tuple[float, str]:
        """The longest estimated duration of one invocation, and its handler."""
        top = max(self.invocations.values(), key=lambda i: i.seconds, default=None)
        return (top.seconds, top.handler) if top else (0.0, "")

    def max_writes_per_item_per_phase(self) -> tuple[int, str]:
        """The most writes to one item in one phase, and which item and phase."""
        if not self.item_writes:
            return 0, ""
        (pk, sk, phase), writes = self.item_writes.most_common(1)[0]
        return writes, f"{_kind(pk, sk)} in {phase}"

    def _phase_of(self, pk: str, sk: str) -> str:
        run_id = pk.removeprefix("RUN#") if pk.startswith("RUN#") else None
        if run_id is not None:
            for prefix in ("GROUP#", "INST#"):
                if sk.startswith(prefix):
                    group_id = sk.removeprefix(prefix).split("#", 1)[0]
                    return self._group_phase.get((run_id, group_id), "START_RUN")
            return self._run_phase.get(run_id, "START_RUN")
        # Leases and correlation items: the phase of the one run of the bench.
        return next(iter(self._run_phase.values()), "START_RUN") if self._run_phase else RUN_LEVEL


def _kind(pk: str, sk: str) -> str:
    """An item's kind, for the bench's output (not its key: run ids vary)."""
    if sk == "RUN":
        return "run header"
    for prefix, kind in (("GROUP#", "group"), ("INST#", "instance"), ("CHUNK#", "chunk")):
        if sk.startswith(prefix):
            return kind
    return pk.split("#", 1)[0].lower()


def written_keys(operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    def key_of(request: dict[str, Any]) -> tuple[str, str]:
        key = request.get("Key") or request.get("Item") or {}
        return _plain(key.get("pk")), _plain(key.get("sk"))

    if operation == "TransactWriteItems":
        return [key_of(next(iter(entry.values()))) for entry in params["TransactItems"]]
    if operation == "BatchWriteItem":
        return [
            key_of(next(iter(entry.values())))
            for entries in params["RequestItems"].values()
            for entry in entries
        ]
    return [key_of(params)]


def _plain(value: Any) -> str:
    if isinstance(value, dict):  # the wire format: {"S": "..."}
        return str(next(iter(value.values()), ""))
    return str(value or "")


def item_size(item: dict[str, Any]) -> int:
    """An item's size by DynamoDB's rule, from its wire format."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: Any) -> int:
    if not isinstance(value, dict) or len(value) != 1:
        return len(str(value).encode())
    ((kind, inner),) = value.items()
    if kind in ("S", "B"):
        return len(str(inner).encode())
    if kind == "N":
        return math.ceil(len(str(inner).lstrip("-").replace(".", "")) / 2) + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(v) + 1 for k, v in inner.items())
    if kind == "L":
        return 3 + sum(_value_size(v) + 1 for v in inner)
    return sum(len(str(v).encode()) for v in inner)  # sets
