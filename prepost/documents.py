"""Reading the JSON documents an operator hands the `prepost` command (run inputs,
profiles): every way a file can be unusable is one sentence, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prepost.errors import UsageError

# An EventBridge entry carries at most 256 KB, and a start event carries the input.
MAX_BYTES = 256 * 1024
# Far deeper than any run input or profile (four or five levels); deeper is not one.
MAX_DEPTH = 32


def read_object(path: Path, what: str = "a run input") -> dict[str, Any]:
    """The JSON object in `path`; UsageError saying why when there is none."""
    try:
        if path.is_dir():
            raise UsageError(f"cannot read {path}: it is a directory, not a JSON file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UsageError(
                f"{path} is {size} bytes, more than the {MAX_BYTES // 1024} KB an event "
                f"may carry: it cannot be {what}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {path}: it is not UTF-8 text") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise UsageError(f"{path} is nested too deeply to be {what}") from exc
    if depth(document) > MAX_DEPTH:
        raise UsageError(f"{path} is nested more than {MAX_DEPTH} levels deep: not {what}")
    if not isinstance(document, dict):
        raise UsageError(f"{path} holds a JSON {_json_kind(document)}, not {what} (an object)")
    return document


def depth(document: Any) -> int:
    """How deeply `document` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        stack += [(child, level + 1) for child in children]
    return deepest


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array"
