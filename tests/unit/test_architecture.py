"""The layout rules of STYLE.md, enforced."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYED = [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py"))]
GATEWAYS = ROOT / "chalicelib" / "gateways"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_gateways_import_boto3() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in DEPLOYED
        if GATEWAYS not in path.parents and imported_modules(path) & {"boto3", "botocore"}
    ]
    assert offenders == []


def test_the_check_above_can_fail(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from boto3.session import Session\n")
    assert "boto3" in imported_modules(sneaky)


def test_deployed_code_does_not_import_operator_tooling() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in DEPLOYED if "prepost" in imported_modules(p)]
    assert offenders == []


LOCAL_MODE = re.compile(r"(?i)(local.?mode|moto|simulat|emulat|is_local|localstack|virtual)")


def local_mode_mentions(path: Path) -> list[str]:
    """Names, attributes and strings of deployed code that speak of local mode."""
    found = []
    tree = ast.parse(path.read_text())
    docstrings = {  # explaining local mode is fine; branching on it is not
        id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
    }
    for node in ast.walk(tree):
        if id(node) in docstrings:
            continue
        text = None
        if isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        if text and LOCAL_MODE.search(text):
            found.append(f"{path.name}:{node.lineno}: {text[:60]}")
    return found


def test_deployed_code_does_not_branch_on_local_mode() -> None:
    # Local mode changes endpoints, clocks and the store it hands in; never a code path.
    offenders = [m for path in DEPLOYED for m in local_mode_mentions(path)]
    assert offenders == []


def test_the_local_mode_check_can_fail(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("if settings.local_mode:\n    pass\n")
    assert local_mode_mentions(sneaky)
