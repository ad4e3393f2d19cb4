"""EventBridge pattern matching, for the pattern features the app uses."""

from __future__ import annotations

from typing import Any


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    """True when `event` matches `pattern` (exact values, prefix, nested fields)."""
    for field, expected in pattern.items():
        if field not in event:
            return False
        actual = event[field]
        if isinstance(expected, dict):
            if not isinstance(actual, dict) or not matches(expected, actual):
                return False
        elif not _any_value_matches(expected, actual):
            return False
    return True


def _any_value_matches(allowed: list[Any], actual: Any) -> bool:
    values = actual if isinstance(actual, list) else [actual]
    return any(_value_matches(rule, value) for rule in allowed for value in values)


def _value_matches(rule: Any, value: Any) -> bool:
    if isinstance(rule, dict):
        if "prefix" in rule:
            return isinstance(value, str) and value.startswith(rule["prefix"])
        if "anything-but" in rule:
            excluded = rule["anything-but"]
            return value not in (excluded if isinstance(excluded, list) else [excluded])
        raise ValueError(f"pattern rule not supported locally: {rule}")
    return bool(rule == value)
