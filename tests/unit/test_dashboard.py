"""The stage's dashboard names only metrics the code emits, with the dimensions it emits.

What the code emits is found by reading it (no list kept by hand): every call of
`observability.count`, `observability.seconds` and `observability.phase_outcome` in `app.py`
and `chalicelib/`, its metric name a string, an f-string or the phase and outcome of
`phase_outcome`. A part of a name that is not written out is resolved through the
annotations the code already has: a parameter or attribute typed with an enum of the
models, a loop over such an enum, a value unpacked from a call whose return type says it.
A part that cannot be resolved matches nothing, so a widget can only name what is sure.
"""

from __future__ import annotations

import ast
import enum
import importlib
import itertools
import json
import pkgutil
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import chalicelib
from chalicelib import observability
from chalicelib.models.state import InstanceStatus, Phase
from prepost import package
from prepost.local import STAGE

ROOT = Path(__file__).resolve().parents[2]
CODE = [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]
NAME_FIRST = {"count", "seconds"}  # observability functions whose first argument is the name
PHASE_OUTCOME = "phase_outcome"  # observability.phase_outcome(phase, outcome): PHASE_OUTCOME


def string_enums() -> dict[str, dict[str, str]]:
    """Every string enum defined in `chalicelib`, by class name: member name -> value."""
    found: dict[str, dict[str, str]] = {}
    for module_info in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, enum.Enum)
                and value.__module__ == module.__name__
                and all(isinstance(member.value, str) for member in value)
            ):
                found[value.__name__] = {member.name: member.value for member in value}
    return found


ENUMS = string_enums()


@dataclass
class Scope:
    """Where a call is: its enclosing classes and functions, innermost last."""

    classes: list[ast.ClassDef] = field(default_factory=list)
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=list)


@dataclass
class Emissions:
    """The metric names the code emits, and the calls whose name could not be resolved."""

    names: set[str] = field(default_factory=set)
    unresolved: list[str] = field(default_factory=list)


class Resolver:
    """The values a part of a metric name can take, from the code's own annotations."""

    def __init__(self, trees: Iterable[ast.Module]) -> None:
        self.returns: dict[str, list[ast.expr | None]] = {}
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.returns.setdefault(node.name, []).append(node.returns)

    def name(self, expr: ast.expr, scope: Scope) -> set[str] | None:
        """Every string `expr` (a metric name, or a part of one) may be; None: unknown."""
        if isinstance(expr, ast.JoinedStr):
            parts: list[set[str]] = []
            for value in expr.values:
                if isinstance(value, ast.Constant):
                    parts.append({str(value.value)})
                    continue
                assert isinstance(value, ast.FormattedValue)
                if value.conversion != -1 or value.format_spec is not None:
                    return None
                part = self.name(value.value, scope)
                if part is None:
                    return None
                parts.append(part)
            return {"".join(chosen) for chosen in itertools.product(*parts)}
        if isinstance(expr, ast.Constant):
            return {expr.value} if isinstance(expr.value, str) else None
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            if expr.value.id in ENUMS:  # Phase.BACKUP
                member = ENUMS[expr.value.id].get(expr.attr)
                return None if member is None else {member}
            if expr.value.id == "self" and scope.classes:
                return self._attribute(scope.classes[-1], expr.attr)
        if isinstance(expr, ast.Name):
            for function in reversed(scope.functions):
                found = self._local(function, expr.id)
                if found is not None:
                    return found
        return None

    def annotation(self, annotation: ast.expr | None) -> set[str] | None:
        """The values of a type: an enum, a union of them, a Literal; None: not one."""
        if isinstance(annotation, ast.Name) and annotation.id in ENUMS:
            return set(ENUMS[annotation.id].values())
        if isinstance(annotation, ast.Constant) and annotation.value is None:
            return set()
        if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
            left, right = self.annotation(annotation.left), self.annotation(annotation.right)
            return None if left is None or right is None else left | right
        if (
            isinstance(annotation, ast.Subscript)
            and isinstance(annotation.value, ast.Name)
            and annotation.value.id == "Literal"
        ):
            items = (
                annotation.slice.elts
                if isinstance(annotation.slice, ast.Tuple)
                else [annotation.slice]
            )
            if all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
                return {i.value for i in items if isinstance(i, ast.Constant)}
        return None

    def _attribute(self, cls: ast.ClassDef, attr: str) -> set[str] | None:
        for node in cls.body:
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == attr
            ):
                return self.annotation(node.annotation)
            if isinstance(node, ast.FunctionDef) and node.name == attr:  # a property
                return self.annotation(node.returns)
        return None

    def _local(
        self, function: ast.FunctionDef | ast.AsyncFunctionDef, name: str
    ) -> set[str] | None:
        arguments = function.args
        for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            if argument.arg == name:
                return self.annotation(argument.annotation)
        for node in ast.walk(function):
            if isinstance(node, ast.For) and _is_name(node.target, name):
                if isinstance(node.iter, ast.Name) and node.iter.id in ENUMS:
                    return set(ENUMS[node.iter.id].values())
                return None
            if isinstance(node, ast.AnnAssign) and _is_name(node.target, name):
                return self.annotation(node.annotation)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                for target in node.targets:
                    if _is_name(target, name):
                        return self.annotation(self._returns(node.value))
                    if isinstance(target, ast.Tuple):
                        for index, element in enumerate(target.elts):
                            if _is_name(element, name):
                                return self.annotation(self._element(node.value, index))
        return None

    def _returns(self, call: ast.Call) -> ast.expr | None:
        """The return annotation of the function `call` calls, if one function has that name."""
        func = call.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        candidates = self.returns.get(called or "", [])
        return candidates[0] if len(candidates) == 1 else None

    def _element(self, call: ast.Call, index: int) -> ast.expr | None:
        returns = self._returns(call)
        if (
            isinstance(returns, ast.Subscript)
            and isinstance(returns.value, ast.Name)
            and returns.value.id == "tuple"
            and isinstance(returns.slice, ast.Tuple)
            and index < len(returns.slice.elts)
        ):
            return returns.slice.elts[index]
        return None


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _emitter(call: ast.Call, in_observability: bool) -> str | None:
    """`count`, `seconds` or `phase_outcome` when `call` is a call of one of them."""
    func = call.func
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "observability"
    ):
        name = func.attr
    elif isinstance(func, ast.Name) and in_observability:
        name = func.id
    else:
        return None
    return name if name in NAME_FIRST | {PHASE_OUTCOME} else None


def _calls(node: ast.AST, scope: Scope) -> Iterator[tuple[ast.Call, Scope]]:
    """Every call under `node`, with the classes and functions it is in."""
    for child in ast.iter_child_nodes(node):
        inner = scope
        if isinstance(child, ast.ClassDef):
            inner = Scope([*scope.classes, child], scope.functions)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = Scope(scope.classes, [*scope.functions, child])
        if isinstance(child, ast.Call):
            yield child, scope
        yield from _calls(child, inner)


def emitted(paths: Iterable[Path]) -> Emissions:
    """The metric names the code in `paths` emits through `observability`."""
    trees = {path: ast.parse(path.read_text()) for path in paths}
    resolver = Resolver(trees.values())
    found = Emissions()
    for path, tree in trees.items():
        in_observability = path.name == "observability.py"
        for call, scope in _calls(tree, Scope()):
            emitter = _emitter(call, in_observability)
            if emitter is None or not call.args:
                continue
            if emitter == PHASE_OUTCOME:  # f"{phase}_{outcome}"
                phases, outcomes = (resolver.name(arg, scope) for arg in call.args[:2])
                names = None
                if phases is not None and outcomes is not None:
                    names = {f"{phase}_{outcome}" for phase in phases for outcome in outcomes}
            else:
                names = resolver.name(call.args[0], scope)
            if names is None:
                found.unresolved.append(f"{path.name}:{call.lineno}: {ast.unparse(call)}")
            else:
                found.names |= names
    return found


# -- the dashboard -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    merged: dict[str, Any] = package.merge_template(STAGE, package.handlers())["Resources"]
    return merged


@pytest.fixture(scope="module")
def body(resources: dict[str, Any]) -> dict[str, Any]:
    dashboard = resources["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    assert dashboard["Properties"]["DashboardName"] == f"prepost-backup-{STAGE}"
    text = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]  # a JSON string
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def metrics_of(body: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Namespace, name and dimensions of every metric every widget names."""
    for widget in body["widgets"]:
        for metric in widget["properties"]["metrics"]:
            fields = [part for part in metric if not isinstance(part, dict)]
            namespace, name, *pairs = fields
            assert namespace != "..."  # spelt out, so that this test reads every one
            yield namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True))


def test_every_metric_of_the_app_on_the_dashboard_is_one_the_code_emits(
    body: dict[str, Any],
) -> None:
    code = emitted(CODE)
    named = {name for namespace, name, _ in metrics_of(body) if namespace == "PrePostBackup"}
    assert named
    assert named - code.names == set(), f"not emitted; unresolved emissions: {code.unresolved}"


def test_the_dashboard_shows_what_an_operator_watches(body: dict[str, Any]) -> None:
    named = {(namespace, name) for namespace, name, _ in metrics_of(body)}
    app = {name for namespace, name in named if namespace == "PrePostBackup"}
    assert {"RUN_SUCCEEDED", "RUN_FAILED", "RUN_TIMED_OUT", "RunsRejected"} <= app
    assert {f"INSTANCE_{status}" for status in InstanceStatus} - app == {"INSTANCE_IN_PROGRESS"}
    assert {"InstancesStuckStopped", "ReconcileErrors"} <= app
    assert {f"{phase}_DURATION_SECONDS" for phase in Phase} <= app
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in named


def emitted_dimensions() -> dict[str, str]:
    """The dimensions Powertools emits every metric of the app with."""
    metrics = observability.metrics()
    metrics.add_metric(name="Probe", unit="Count", value=1)
    try:
        emf = metrics.serialize_metric_set()
    finally:
        metrics.clear_metrics()
    [[*names]] = emf["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    return {name: emf[name] for name in names}


def test_each_metric_is_queried_with_exactly_the_dimensions_it_is_emitted_with(
    body: dict[str, Any], resources: dict[str, Any]
) -> None:
    app_dimensions = emitted_dimensions()
    assert app_dimensions == {"service": "prepost-backup"}
    for namespace, name, dimensions in metrics_of(body):
        if namespace == "PrePostBackup":
            assert dimensions == app_dimensions, name
        else:  # the template's own dead-letter queue, named through Fn::Sub
            assert (namespace, name) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
            assert dimensions == {"QueueName": "${DeadLetterQueue.QueueName}"}
            assert resources["DeadLetterQueue"]["Type"] == "AWS::SQS::Queue"


def test_the_body_substitutes_only_the_region_and_the_queue_name(
    resources: dict[str, Any], body: dict[str, Any]
) -> None:
    text = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert set(re.findall(r"\$\{([^}]*)\}", text)) == {"AWS::Region", "DeadLetterQueue.QueueName"}
    places = set()
    for widget in body["widgets"]:
        assert widget["type"] == "metric"
        assert widget["properties"]["region"] == "${AWS::Region}"
        assert widget["x"] + widget["width"] <= 24
        places.add((widget["x"], widget["y"]))
    assert len(places) == len(body["widgets"])  # no widget hides another


# -- the scan can fail -------------------------------------------------------------------------


def scan(tmp_path: Path, source: str) -> Emissions:
    path = tmp_path / "module.py"
    path.write_text(source)
    return emitted([path])


def test_the_scan_resolves_names_through_annotations_only(tmp_path: Path) -> None:
    found = scan(
        tmp_path,
        "def finish(phase: Phase, status: PhaseStatus, label: str) -> None:\n"
        "    observability.phase_outcome(phase, status)\n"
        "    observability.phase_outcome(Phase.BACKUP, 'TIMED_OUT')\n"
        "    for outcome in InstanceStatus:\n"
        "        observability.count(f'INSTANCE_{outcome}', 2)\n"
        "    observability.count(f'{label}_SECONDS')\n"
        "    observability.seconds('RunDurationSeconds', 1.0)\n"
        "def outcome() -> tuple[RunStatus, str]: ...\n"
        "def finalize() -> None:\n"
        "    status, reason = outcome()\n"
        "    observability.count(f'RUN_{status}')\n"
        "    observability.count(f'RUN_{reason}')\n",
    )
    assert "BACKUP_SUCCEEDED" in found.names
    assert "POST_SCRIPT_SKIPPED" in found.names
    assert "BACKUP_TIMED_OUT" in found.names
    assert "STOP_TIMED_OUT" not in found.names
    assert "INSTANCE_STUCK_STOPPED" in found.names
    assert "RunDurationSeconds" in found.names
    assert "RUN_TIMED_OUT" in found.names
    assert "RUN_BACKUP" not in found.names
    assert "RUN_STUCK_STOPPED" not in found.names
    # `label: str` and `reason: str` could be anything: those names match nothing.
    assert len(found.unresolved) == 2
    assert not any(name.endswith("_SECONDS") for name in found.names)


def test_a_name_nobody_emits_is_caught(tmp_path: Path) -> None:
    code = emitted(CODE)
    assert {"RUN_SUCCEEDED", "BACKUP_FAILED", "ReconcileErrors"} <= code.names
    for unknown in ("RUN_SUCEEDED", "RUN_STUCK_STOPPED", "INSTANCE_RUNNING", "ReconcileError"):
        assert unknown not in code.names
    # Drop the one emission of ReconcileErrors: the scan no longer finds it.
    source = (ROOT / "chalicelib" / "logic" / "reconcile.py").read_text()
    assert 'observability.count("ReconcileErrors")' in source
    found = scan(tmp_path, source.replace('count("ReconcileErrors")', 'count("Other")'))
    assert "ReconcileErrors" not in found.names
