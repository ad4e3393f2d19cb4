"""The layout rules of STYLE.md, enforced."""

from __future__ import annotations

import ast
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
