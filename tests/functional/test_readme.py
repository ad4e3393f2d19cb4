"""The README's command blocks that local mode can run, run as written: each behaves as
the README says (a scenario meets its `expect`, a document is JSON, no traceback), and
the demo prints what the README shows."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PREPOST = Path(sys.executable).parent / "prepost"
LOCAL = ("simulate", "demo", "bench")  # what needs no AWS account


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of `language` ("" for plain ones), in order."""
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S)
            if lang == language]  # fmt: skip


def commands() -> list[str]:
    """Every `prepost` or `make demo` line of the README's shell blocks that local mode runs
    (AWS commands, `make test` itself, and the twenty-minute `make bench` left out)."""
    found = []
    for block in blocks("sh"):
        for line in block.splitlines():
            if not re.match(r"\s*(\S*/)?prepost |\s*make demo\b", line):
                continue
            words = shlex.split(line, comments=True)
            if Path(words[0]).name == "prepost" and words[1] in LOCAL:
                found.append(shlex.join(words))
            elif words[:2] == ["make", "demo"]:
                found.append("make demo")
    return found


def test_the_readme_has_local_commands_to_run() -> None:
    found = commands()
    assert "make demo" in found
    assert sum(1 for c in found if " simulate" in c) >= 4


def run(command: str) -> subprocess.CompletedProcess[str]:
    words = shlex.split(command)
    if words[:2] == ["make", "demo"]:
        stamps = sorted((ROOT / ".venv").glob(".installed-*"))
        if not stamps:
            pytest.skip("make demo runs in the virtualenv `make` builds (.venv): none here")
        # Never rebuild the virtualenv from inside the test suite.
        words = ["make", "--no-print-directory", "-o", str(stamps[0].relative_to(ROOT)), "demo"]
    else:
        words[0] = str(PREPOST)
    return subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)  # fmt: skip


def check(result: subprocess.CompletedProcess[str]) -> None:
    """Behaved as written: 0, or 1 for a run that did not succeed as its scenario expects."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "expectation missed" not in result.stdout, result.stdout
    assert result.returncode in (0, 1), (result.returncode, result.stderr)
    if "--output json" in shlex.join(result.args) or "--json" in result.args:
        report = json.loads(result.stdout)
        assert report["expect_misses"] == []
        assert (report["status"] == "SUCCEEDED") == (result.returncode == 0)
    else:
        status = re.search(r"run status: (\w+)", result.stdout)
        assert status is not None, result.stdout
        assert (status.group(1) == "SUCCEEDED") == (result.returncode == 0)


@pytest.mark.parametrize("command", [c for c in commands() if c != "make demo"])
def test_a_readme_command_behaves_as_written(command: str) -> None:
    check(run(command))


def test_make_demo_prints_what_the_readme_shows() -> None:
    result = run("make demo")
    check(result)
    assert result.returncode == 0, result.stderr
    [shown] = [block for block in blocks("") if "+00:00:00" in block]
    printed = {line.strip() for line in result.stdout.splitlines()}
    for line in shown.splitlines():
        if line.strip() != "...":
            assert line.strip() in printed, line
    # The quick start's count is the demo's.
    said = re.search(r"make demo .*fleet of (\d+) instances", README)
    ran = re.search(r"run status: SUCCEEDED  \((\d+) instances", result.stdout)
    assert said is not None
    assert ran is not None
    assert said.group(1) == ran.group(1)


def test_the_example_scenario_meets_its_expectations(tmp_path: Path) -> None:
    [example] = [block for block in blocks("json") if '"expect"' in block]
    scenario = tmp_path / "example.json"
    scenario.write_text(example)
    result = run(f"prepost simulate {scenario}")
    check(result)
    expected = json.loads(example)["expect"]["run"]
    assert f"run status: {expected}" in result.stdout
