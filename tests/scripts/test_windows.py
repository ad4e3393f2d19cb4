"""The Windows kit, `scripts/prepost-freeze.ps1`, checked as far as this machine can.

No PowerShell runs here, so the script is read by a PowerShell grammar (tree-sitter's) and
its structure is checked: it parses; strict mode and 'Stop' come first; every exit is
explicit and the script ends with one, with nothing before its `try` that could fail; a
freeze starts its guard (a one-shot scheduled task) before it stops anything, records
what it stops before stopping it and undoes it when it fails; Thaw is idempotent. Each
check is also run on a copy of the script with that property broken, and must object.
Where `pwsh` exists, the script's argument handling and idempotent Thaw are run for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepost-freeze.ps1"
SOURCE = SCRIPT.read_text()
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
NO_PWSH = (
    "pwsh is not installable from this machine's registries (PyPI, Debian's, npm: npm's "
    "`pwsh` package downloads PowerShell from GitHub when it installs)"
)
Node = tree_sitter.Node


def parse(source: str) -> Node:
    return PARSER.parse(source.encode()).root_node


def text(node: Node) -> str:
    return (node.text or b"").decode()


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def statements(node: Node) -> list[Node]:
    """The statements of a statement list, comments left out."""
    return [child for child in node.named_children if child.type != "comment"]


def top_level(root: Node) -> list[Node]:
    [body] = [child for child in root.named_children if child.type == "statement_list"]
    return statements(body)


def functions(root: Node) -> dict[str, str]:
    """Each function's name and its whole text."""
    found = {}
    for node in walk(root):
        if node.type == "function_statement":
            [name] = [child for child in node.named_children if child.type == "function_name"]
            found[text(name)] = text(node)
    return found


def flow(root: Node, keyword: str) -> list[str]:
    """The text of every `exit` (or `return`, ...) statement."""
    return [
        text(node)
        for node in walk(root)
        if node.type == "flow_control_statement" and text(node).lower().split()[0] == keyword
    ]


# -- the checks: each returns what is wrong with a script's source ---------------------------


def syntax_problems(source: str) -> list[str]:
    root = parse(source)
    return [
        f"line {node.start_point.row + 1}: cannot parse {text(node)[:60]!r}"
        for node in walk(root)
        if node.type == "ERROR" or node.is_missing
    ]


def strictness_problems(source: str) -> list[str]:
    """Comment-based help, the parameters, then strict mode and 'Stop' before anything else."""
    root = parse(source)
    kinds = [child.type for child in root.named_children if child.type != "comment"]
    if kinds != ["param_block", "statement_list"]:
        return [f"the script is not help, param(), then statements: {kinds}"]
    first = [text(node) for node in top_level(root)[:2]]
    if first != ["Set-StrictMode -Version Latest", "$ErrorActionPreference = 'Stop'"]:
        return [f"the first two statements are {first}"]
    return []


def exit_problems(source: str) -> list[str]:
    """Every exit names its code; the script's last statement is one; every code an action
    returns is 0 or 1 (2 comes from the catch of a usage error)."""
    root = parse(source)
    problems = [e for e in flow(root, "exit") if not re.fullmatch(r"exit\s+(\d+|\$\w+)", e)]
    last = top_level(root)[-1]
    if last.type != "flow_control_statement" or not text(last).lower().startswith("exit"):
        problems.append(f"the script ends with {text(last)[:60]!r}, not an exit")
    actions = functions(root)
    for name in ("Invoke-Main", "Invoke-Freeze", "Invoke-Thaw", "Show-Status"):
        for returned in flow(parse(actions.get(name, "")), "return"):
            if not re.fullmatch(r"return ([01]|Invoke-Freeze|Invoke-Thaw|Show-Status)", returned):
                problems.append(f"{name}: {returned!r} is not an exit code")
    codes = {
        text(node).split("=", 1)[1].strip()
        for node in walk(root)
        if node.type == "assignment_expression" and text(node).startswith("$exitCode ")
    }
    if codes != {"1", "2", "[int]$returned[-1]"}:
        problems.append(f"$exitCode is set to {sorted(codes)}")
    return problems


LITERAL = re.compile(
    r"""'[^']*'|"[^"$`]*(\$env:\w+[^"$`]*)?"|\d+|\$null|@\(\s*'[^']*'(\s*,\s*'[^']*')*\s*\)"""
)


def before_try_problems(source: str) -> list[str]:
    """Nothing that can fail runs outside the final try: literals and function definitions
    only, parameters that bind whatever they are given, and a catch that takes everything."""
    root = parse(source)
    body = top_level(root)
    tries = [node for node in body if node.type == "try_statement"]
    if len(tries) != 1:
        return [f"{len(tries)} top-level try statements, not 1"]
    problems = []
    for node in body[2 : body.index(tries[0])]:
        if node.type == "function_statement":
            continue
        assignment = node.named_children[0] if node.named_children else None
        value = text(node).split("=", 1)[-1].strip()
        if assignment is None or assignment.type != "assignment_expression":
            problems.append(f"{text(node)[:60]!r} runs before the try")
        elif not LITERAL.fullmatch(value):
            problems.append(f"{text(node)[:60]!r} computes before the try")
    catches = [text(node) for node in walk(tries[0]) if node.type == "catch_clause"]
    if not any(re.match(r"catch\s*\{", clause) for clause in catches):
        problems.append("the try has no catch for every error")
    [param_block] = [child for child in root.named_children if child.type == "param_block"]
    for attributes in (node for node in walk(param_block) if node.type == "attribute_list"):
        if text(attributes) not in ("[string]", "[switch]"):
            problems.append(f"parameter attribute {text(attributes)} can fail to bind")
    if "CmdletBinding" in source.split("param(", 1)[0].split("#>")[-1]:
        problems.append("[CmdletBinding()] refuses unknown parameters before the script runs")
    return problems


def order_in(body: str, *steps: str) -> list[str]:
    """Whether `steps` first appear in `body` in that order."""
    where = [body.find(step) for step in steps]
    if -1 in where:
        return [f"missing {steps[where.index(-1)]!r}"]
    return [] if where == sorted(where) else [f"not in the order {steps}"]


def guard_problems(source: str) -> list[str]:
    """Freeze: the guard first, each service recorded before it is stopped, a failure
    undone (exit 1); the guard a one-shot task that runs the thaw as SYSTEM."""
    found = functions(parse(source))
    freeze, guard = found.get("Invoke-Freeze", ""), found.get("Start-Guard", "")
    problems = order_in(
        freeze, "Start-Guard", "Invoke-Hook $freezeWith", "Add-Content", "Stop-Named"
    )
    failed = freeze[freeze.find("catch") :]
    problems += order_in(failed, "Undo-Freeze", "Stop-Guard", "return 1")
    for needed in ("Register-ScheduledTask", "-Once", "NT AUTHORITY\\SYSTEM", "-Action Thaw"):
        if needed not in guard:
            problems.append(f"Start-Guard lacks {needed}")
    return problems


def thaw_problems(source: str) -> list[str]:
    """Thaw: with nothing recorded it says so and succeeds; else it undoes the freeze and
    removes the guard (only after everything was thawed)."""
    thaw = functions(parse(source)).get("Invoke-Thaw", "")
    nothing = "'nothing to thaw: no freeze is in place (thawed already, or never frozen)'"
    problems = order_in(thaw, nothing, "return 0")
    undone = thaw[thaw.find("Undo-Freeze") :]
    problems += order_in(undone, "Undo-Freeze", "return 1", "Stop-Guard", "return 0")
    if thaw.count(nothing) != 2:  # no state folder at all, or an empty one
        problems.append("Thaw without a freeze does not always say so")
    return problems


CHECKS: dict[str, Callable[[str], list[str]]] = {
    "syntax": syntax_problems,
    "strictness": strictness_problems,
    "exits": exit_problems,
    "before the try": before_try_problems,
    "guard": guard_problems,
    "thaw": thaw_problems,
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_the_windows_script_holds(check: str) -> None:
    assert CHECKS[check](SOURCE) == []


# Each property broken in a copy of the script (a text replaced): its check must object.
RECORD = "Add-Content -LiteralPath (Get-StatePath 'stopped.txt') -Value $name"
STOP = "Stop-Named $name $timeout"
BETWEEN = "\n                "
NOTHING = "Write-Line 'nothing to thaw: no freeze is in place (thawed already, or never frozen)'"
BROKEN = [
    ("syntax", "function Get-Guard {", "function Get-Guard "),
    ("syntax", '$line = "prepost-freeze: $Message"', '$line = "prepost-freeze: $Message'),
    ("strictness", "Set-StrictMode -Version Latest\n", ""),
    ("strictness", "Set-StrictMode -Version Latest\n", "$x = 1\nSet-StrictMode -Version Latest\n"),
    ("strictness", "$ErrorActionPreference = 'Stop'", "$ErrorActionPreference = 'Continue'"),
    ("exits", "exit $exitCode", "exit"),
    ("exits", "exit $exitCode\n", "exit $exitCode\nWrite-Output done\n"),
    ("exits", "'Status' { return Show-Status }", "'Status' { Show-Status; return }"),
    ("exits", "$exitCode = 2", "$exitCode = 3"),
    ("before the try", "$MaxMaxSeconds = 86400", "$MaxMaxSeconds = [int]$env:MAX"),
    ("before the try", "$GuardName = 'prepost-freeze-guard'", "Get-Service | Out-Null"),
    ("before the try", "[string]$MaxSeconds = '300'", "[int]$MaxSeconds = 300"),
    (
        "before the try",
        "catch {\n    Write-Problem",
        "catch [System.IO.IOException] {\n    Write-Problem",
    ),
    ("guard", "            Start-Guard $seconds\n", ""),
    ("guard", RECORD + BETWEEN + STOP, STOP + BETWEEN + RECORD),
    ("guard", "$left = Undo-Freeze $timeout\n            if", "$left = 0\n            if"),
    ("guard", "New-ScheduledTaskTrigger -Once", "New-ScheduledTaskTrigger -Daily"),
    ("thaw", NOTHING + "\n        return 0", "throw 'nothing to thaw'"),
    ("thaw", "if (-not $ByGuard) { Stop-Guard }  #", "#"),
]


@pytest.mark.parametrize(
    ("check", "old", "new"), BROKEN, ids=[f"{check}-{i}" for i, (check, *_) in enumerate(BROKEN)]
)
def test_each_check_objects_to_a_script_that_breaks_it(check: str, old: str, new: str) -> None:
    assert old in SOURCE, old
    assert CHECKS[check](SOURCE.replace(old, new, 1)) != []


def test_every_parameter_is_in_the_help_and_help_is_an_option() -> None:
    help_block = SOURCE.split("#>", 1)[0]
    for keyword in (".SYNOPSIS", ".DESCRIPTION", ".EXAMPLE"):
        assert keyword in help_block
    declared = re.findall(r"\[(?:string|switch)\]\$(\w+)", SOURCE.split("\n)\n", 1)[0])
    assert "Help" in declared
    documented = set(re.findall(r"^\.PARAMETER (\w+)$", help_block, re.M))
    assert documented == set(declared) - {"ByGuard"}  # internal: the guard's own thaw
    assert "if ($Help)" in functions(parse(SOURCE))["Invoke-Main"]


def test_the_script_is_ascii_as_windows_powershell_reads_it() -> None:
    # Windows PowerShell 5.1 reads a file without a byte order mark in the ANSI code page.
    assert SCRIPT.read_bytes().isascii()


def test_the_guard_outlives_the_command_and_hooks_stay_in_their_folder() -> None:
    found = functions(parse(SOURCE))
    # A task of the Task Scheduler, not a child of the SSM agent's process: it inherits no
    # handle of the agent's output pipes and is not ended with the command.
    assert "Start-Process" not in SOURCE
    assert "$copy = Get-StatePath 'prepost-freeze.ps1'" in found["Start-Guard"]
    # A recorded hook is checked again before it runs: the record is a file.
    assert "Invoke-Hook (Resolve-Hook $recorded 'ThawHook')" in found["Undo-Freeze"]
    assert "$full.StartsWith($HookDir" in found["Resolve-Hook"]


# -- run for real where PowerShell exists ------------------------------------------------------


@pytest.mark.skipif(shutil.which("pwsh") is None, reason=NO_PWSH)
@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        ([], 2, "-Action Freeze, Thaw or Status?"),
        (["-Action", "Melt"], 2, "not 'Melt'"),
        (["-Action", "Freeze", "-Services", "W3SVC", "-MaxSeconds", "0"], 2, "takes 1 to 86400"),
        (["-Action", "Thaw", "-Services", "W3SVC"], 2, "Thaw takes no -Services"),
        (["-Action", "Thaw", "-Bogus", "x"], 2, "unknown argument"),
        (["-Action", "Thaw"], 0, "nothing to thaw"),
        (["-Action", "Status"], 0, "nothing frozen"),
        (["-Help"], 0, "SYNOPSIS"),
    ],
)
def test_the_script_run_by_pwsh(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pwsh", "-NoProfile", "-NonInteractive", "-File", str(SCRIPT), *args],
            capture_output=True, text=True, timeout=120, check=False,
            env=os.environ | {"ProgramData": str(tmp_path), "ProgramFiles": str(tmp_path)},
        )  # fmt: skip

    result = run()
    assert result.returncode == code, result.stderr
    assert says in result.stdout + result.stderr
    if args == ["-Action", "Thaw"]:
        assert run().returncode == 0  # a second thaw too
