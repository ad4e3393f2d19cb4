"""The script kit's tests: the kit run as an instance runs it (bash, as root here), against
real file systems and real database servers started by the tests themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "scripts" / "prepost-freeze.sh"
INSTALL = "apt-get install -y mariadb-server postgresql shellcheck (what .ci/run does)"


def run_kit(
    *args: str, state: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The kit as SSM runs it: bash, its state in `state`."""
    return subprocess.run(
        ["bash", str(KIT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=os.environ | {"PREPOST_FREEZE_STATE_DIR": str(state)} | (env or {}),
    )


@pytest.fixture
def state() -> Iterator[Path]:
    """The kit's state directory, on a tmpfs as /run is (never a file system it freezes);
    whatever a test leaves frozen or locked is thawed after it."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    path = base / f"prepost-freeze-test-{uuid.uuid4().hex[:8]}"
    yield path
    if path.exists():
        run_kit("thaw", state=path, timeout=60)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loop_mount(tmp_path: Path) -> Iterator[Path]:
    """A real ext4 file system, loop-mounted (root and loop devices needed: else skipped)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("fsfreeze"):
        pytest.skip("a loop-mounted file system needs root, mkfs.ext4 and fsfreeze")
    image, mount = tmp_path / "fs.img", tmp_path / "mnt"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount a file system here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
