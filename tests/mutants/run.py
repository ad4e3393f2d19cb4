"""`make mutants`: plant each bug of `planted.MUTANTS`, one at a time, and run only the
property test against it; each must be caught.

The bugs are planted in a copy of the tree (in a temporary folder), never in the working
tree, so an interrupted run leaves nothing behind. The property test runs with the
worktree's interpreter and `PREPOST_SCHEDULES` schedules (fewer than `make test`'s), and
stops at its first failure. Prints `caught` or `MISSED` per mutant, then
`mutants: N, caught: M`; exits 1 if any was missed or no longer applies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.mutants.planted import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = os.environ.get("PREPOST_MUTANT_SCHEDULES", "240")
PROPERTY_TEST = "tests/property/test_fault_schedules.py"
SKIP = shutil.ignore_patterns(
    ".git", ".venv*", "build", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"
)


def plant(tree: Path, mutant: Mutant) -> str | None:
    """Write the bug into the copy; why it cannot be planted, if it cannot."""
    path = tree / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != 1:
        return f"mutant no longer applies ({mutant.path}: the text occurs {found} times)"
    path.write_text(text.replace(mutant.old, mutant.new))
    return None


def caught(tree: Path) -> tuple[bool, str]:
    """Run the property test in the copy: (caught, what happened)."""
    env = os.environ | {
        "PREPOST_SCHEDULES": SCHEDULES,
        "PREPOST_NO_SHRINK": "1",  # a failing schedule is enough; shrinking it takes minutes
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-n", os.environ.get("PREPOST_MUTANT_WORKERS", "2"), "--dist", "worksteal",
               PROPERTY_TEST]  # fmt: skip
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode == 1:  # tests failed: the bug was seen
        return True, "caught"
    # With xdist, `-x` stops the other workers at the first failure, and pytest then exits
    # 2 (interrupted) although what stopped it was a failed test.
    interrupted = "Interrupted: stopping after" in result.stdout + result.stderr
    if result.returncode == 2 and interrupted and "\nFAILED " in "\n" + result.stdout:
        return True, "caught"
    if result.returncode == 0:
        return False, "MISSED"
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    return False, f"error (pytest exit {result.returncode}): {' / '.join(tail)}"


def main() -> int:
    names = set(sys.argv[1:])
    chosen = [m for m in MUTANTS if not names or m.name in names]
    seen = 0
    with tempfile.TemporaryDirectory(prefix="prepost-mutants-") as folder:
        pristine = Path(folder) / "pristine"
        shutil.copytree(ROOT, pristine, ignore=SKIP)
        for mutant in chosen:
            tree = Path(folder) / mutant.name
            shutil.copytree(pristine, tree)
            began = time.monotonic()
            problem = plant(tree, mutant)
            hit, what = (False, problem) if problem else caught(tree)
            seen += hit
            took = time.monotonic() - began
            print(f"{mutant.name}: {what} ({took:.0f} s) - {mutant.bug}", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    print(f"mutants: {len(chosen)}, caught: {seen}")
    return 0 if seen == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
