"""prepost-freeze.sh's file-system freeze and its guard: the logic with a fake `fsfreeze`
that records its calls, then a real ext4 file system, loop-mounted and frozen for real."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scripts.conftest import INSTALL, KIT, run_kit


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped, does not count)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def guard_pid(state: Path) -> int:
    return int((state / "guard.pid").read_text())


@pytest.fixture
def fake_fsfreeze(tmp_path: Path) -> tuple[Path, Path]:
    """An `fsfreeze` that records each call; it fails for a mount named in FAIL_ON."""
    log = tmp_path / "fsfreeze.log"
    fake = tmp_path / "fsfreeze"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2" >> {log}\n'
        'if [ "$1" = -f ] && [ "$2" = "${FAIL_ON:-}" ]; then echo "fsfreeze: $2: busy" >&2; '
        "exit 1; fi\n"
    )
    fake.chmod(0o755)
    return fake, log


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Two real mount points (tmpfs) for the fake `fsfreeze` to be asked about."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = []
    for name in ("data", "logs"):
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(path)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        made.append(path)
    yield made
    for path in made:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


# -- the command line ------------------------------------------------------------------------


def test_help_documents_every_command(state: Path) -> None:
    shown = run_kit("--help", state=state)
    assert shown.returncode == 0
    for usage in ("freeze fs MOUNT", "freeze mysql", "freeze postgres", "thaw", "--max-seconds",
                  "--force-root", "default 300"):  # fmt: skip
        assert usage in shown.stdout


def test_shellcheck_finds_nothing() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip(f"shellcheck is not installed: {INSTALL}")
    checked = subprocess.run(["shellcheck", str(KIT)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ([], "freeze or thaw?"),
        (["freeze"], "freeze what"),
        (["freeze", "disk"], "freeze what"),
        (["freeze", "fs"], "at least one mount point"),
        (["freeze", "fs", "/", "--max-seconds", "0"], "--max-seconds takes 1 to 86400"),
        (["freeze", "fs", "/", "--max-seconds", "abc"], "--max-seconds takes 1 to 86400"),
        (["freeze", "fs", "/", "--max-seconds", "86401"], "--max-seconds takes 1 to 86400"),
        (["freeze", "fs", "/", "--max-seconds"], "--max-seconds needs a value"),
        (["freeze", "fs", "/", "--frobnicate"], "unknown option --frobnicate"),
        (["freeze", "mysql", "extra"], "unexpected argument extra"),
        (["freeze", "mysql", "--lock-wait-seconds", "300"], "--lock-wait-seconds takes 1"),
        (["thaw", "now"], "thaw takes no arguments"),
        (["melt"], "unknown command 'melt'"),
    ],
)
def test_bad_arguments_are_one_sentence_and_exit_2(args: list[str], said: str, state: Path) -> None:
    done = run_kit(*args, state=state)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
    assert not (state / "guard.pid").exists()  # nothing started


def test_the_root_file_system_is_refused_unless_forced(state: Path) -> None:
    refused = run_kit("freeze", "fs", "/", state=state)
    assert refused.returncode == 2
    assert "refusing to freeze / (the root file system)" in refused.stderr
    assert "the SSM agent" in refused.stderr
    assert "--force-root" in refused.stderr


def test_a_directory_that_is_not_a_mount_point_is_refused(state: Path, tmp_path: Path) -> None:
    refused = run_kit("freeze", "fs", str(tmp_path), state=state)
    assert refused.returncode == 2
    assert "is not a mount point" in refused.stderr
    assert "mounted at /" in refused.stderr


def test_the_file_system_of_its_own_state_is_refused(state: Path) -> None:
    state.mkdir(parents=True)
    found = subprocess.run(["findmnt", "-n", "-o", "TARGET", "--target", str(state)],
                           capture_output=True, text=True, check=True)  # fmt: skip
    holder = found.stdout.split()[0]
    if holder == "/":
        pytest.skip("the state directory is on / here, which is refused for that reason first")
    refused = run_kit("freeze", "fs", holder, state=state)
    assert refused.returncode == 2
    assert "holds this script's state" in refused.stderr


# -- the logic, with a fake fsfreeze ---------------------------------------------------------


def test_freeze_then_thaw_releases_in_reverse_and_stops_the_guard(
    state: Path, fake_fsfreeze: tuple[Path, Path], mounts: list[Path]
) -> None:
    fake, log = fake_fsfreeze
    env = {"PREPOST_FSFREEZE": str(fake)}
    data, logs = (str(m) for m in mounts)
    frozen = run_kit("freeze", "fs", data, logs, "--max-seconds", "60", state=state, env=env)
    assert frozen.returncode == 0, frozen.stderr
    assert f"froze {data}" in frozen.stdout
    assert "the guard thaws them in 60 s" in frozen.stdout
    assert calls(log) == [f"-f {data}", f"-f {logs}"]
    guard = guard_pid(state)
    assert alive(guard)
    assert f"file systems: {data} {logs}" in run_kit("status", state=state).stdout

    thawed = run_kit("thaw", state=state, env=env)
    assert thawed.returncode == 0
    assert calls(log)[2:] == [f"-u {logs}", f"-u {data}"]  # the last frozen first
    assert "prepost-freeze: thawed\n" in thawed.stdout
    time.sleep(0.2)
    assert not alive(guard)
    assert "nothing frozen" in run_kit("status", state=state).stdout

    again = run_kit("thaw", state=state, env=env)  # a second post-script
    assert again.returncode == 0
    assert "nothing to thaw" in again.stdout
    assert len(calls(log)) == 4


def test_a_thaw_without_a_freeze_succeeds_and_says_so(state: Path) -> None:
    done = run_kit("thaw", state=state)
    assert done.returncode == 0
    assert "nothing to thaw: no freeze is in place" in done.stdout


def test_a_second_freeze_keeps_the_first_and_its_guard(
    state: Path, fake_fsfreeze: tuple[Path, Path], mounts: list[Path]
) -> None:
    fake, log = fake_fsfreeze
    env = {"PREPOST_FSFREEZE": str(fake)}
    assert run_kit("freeze", "fs", str(mounts[0]), state=state, env=env).returncode == 0
    guard = guard_pid(state)
    again = run_kit("freeze", "fs", str(mounts[0]), state=state, env=env)
    assert again.returncode == 0
    assert "already frozen since" in again.stdout
    assert calls(log) == [f"-f {mounts[0]}"]
    assert guard_pid(state) == guard
    run_kit("thaw", state=state, env=env)
    assert calls(log) == [f"-f {mounts[0]}", f"-u {mounts[0]}"]


def test_a_freeze_that_fails_half_way_releases_what_it_took(
    state: Path, fake_fsfreeze: tuple[Path, Path], mounts: list[Path]
) -> None:
    fake, log = fake_fsfreeze
    data, logs = (str(m) for m in mounts)
    env = {"PREPOST_FSFREEZE": str(fake), "FAIL_ON": logs}
    failed = run_kit("freeze", "fs", data, logs, state=state, env=env)
    assert failed.returncode == 1
    assert f"fsfreeze -f {logs} failed" in failed.stderr
    assert "releasing what it took" in failed.stderr
    assert calls(log) == [f"-f {data}", f"-f {logs}", f"-u {data}"]
    assert not (state / "guard.pid").exists()
    assert "nothing frozen" in run_kit("status", state=state).stdout


def test_the_guard_thaws_when_no_thaw_comes(
    state: Path, fake_fsfreeze: tuple[Path, Path], mounts: list[Path]
) -> None:
    fake, log = fake_fsfreeze
    env = {"PREPOST_FSFREEZE": str(fake)}
    assert run_kit("freeze", "fs", str(mounts[0]), "--max-seconds", "1", state=state,
                   env=env).returncode == 0  # fmt: skip
    guard_log = state / "guard.log"
    deadline = time.monotonic() + 10
    while "thawed by the guard" not in guard_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert calls(log) == [f"-f {mounts[0]}", f"-u {mounts[0]}"]
    assert "thawed by the guard" in guard_log.read_text()
    late = run_kit("thaw", state=state, env=env)  # the post-script, after all
    assert late.returncode == 0
    assert "nothing to thaw" in late.stdout


# -- a real file system, frozen for real -----------------------------------------------------


def write_in_background(mount: Path) -> subprocess.Popen[bytes]:
    """A write that reaches the disk: it blocks while the file system is frozen."""
    target = mount / f"written-{time.monotonic_ns()}"
    return subprocess.Popen(["sh", "-c", f"echo data > {target} && sync {target}"])


def finishes_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return process.returncode == 0


def test_a_real_freeze_blocks_writes_until_the_thaw(state: Path, loop_mount: Path) -> None:
    frozen = run_kit("freeze", "fs", str(loop_mount), "--max-seconds", "60", state=state)
    assert frozen.returncode == 0, frozen.stderr
    try:
        writer = write_in_background(loop_mount)
        assert not finishes_within(writer, 1.5)  # blocked by the freeze
        assert sorted(os.listdir(loop_mount))  # reading works
    finally:
        thawed = run_kit("thaw", state=state)
    assert thawed.returncode == 0
    assert finishes_within(writer, 5)


def test_a_real_freeze_is_thawed_by_the_guard_without_a_thaw(state: Path, loop_mount: Path) -> None:
    max_seconds = 5  # room for a slow machine to see the write held before the guard ends
    frozen = run_kit(
        "freeze", "fs", str(loop_mount), "--max-seconds", str(max_seconds), state=state
    )
    assert frozen.returncode == 0
    writer = write_in_background(loop_mount)
    assert not finishes_within(writer, 1)
    assert finishes_within(writer, max_seconds + 5)  # the guard thawed it


def test_killing_the_pre_script_leaves_nothing_frozen_past_the_guard(
    state: Path, loop_mount: Path, tmp_path: Path
) -> None:
    """The kit is killed while it freezes a second file system: the first, frozen already,
    is thawed by the guard, which runs in a session of its own."""
    slow = tmp_path / "fsfreeze-slow"
    second = tmp_path / "second"
    second.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(second)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    # Its freeze of the second stalls; its thaw of it (the guard's, if the kit noted the
    # mount before it was killed) does not: a thaw of a mount not frozen fails at once.
    slow.write_text(
        f'#!/bin/sh\n[ "$1 $2" = "-f {second}" ] && exec sleep 60\nexec fsfreeze "$@"\n'
    )
    slow.chmod(0o755)
    try:
        kit = subprocess.Popen(
            ["bash", str(KIT), "freeze", "fs", str(loop_mount), str(second), "--max-seconds", "6"],
            env=os.environ
            | {"PREPOST_FREEZE_STATE_DIR": str(state), "PREPOST_FSFREEZE": str(slow)},
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert kit.stdout is not None
        assert kit.stdout.readline().strip() == f"prepost-freeze: froze {loop_mount}"
        os.killpg(kit.pid, signal.SIGKILL)  # the pre-script, and the freeze it was running
        kit.wait(timeout=5)
        writer = write_in_background(loop_mount)
        assert not finishes_within(writer, 1)
        assert finishes_within(writer, 6 + 5)
    finally:
        subprocess.run(["umount", "-l", str(second)], check=False)
