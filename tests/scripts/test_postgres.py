"""prepost-freeze.sh's PostgreSQL mode against a real server (Debian's PostgreSQL) whose data
directory lies on a real loop-mounted ext4 file system, and whose socket and log lie on a
tmpfs that is never frozen.

Whatever may write to the frozen file system (every client, the server) runs in another
process, watched with timeouts: the test process never touches that file system while it is
frozen. Every test thaws in a `finally`, before it ends its clients: a process held by a
freeze cannot die until the thaw."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.scripts.conftest import INSTALL, KIT, run_kit

OS_USER = "postgres"
TABLE = "backup_probe"
# initdb's own sync is skipped (speed); the server's is not.
INITDB_OPTIONS = ("-U", OS_USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
# What the tests rely on, set rather than assumed: a commit waits for its WAL on disk. The
# server listens on its socket only.
SETTINGS = {
    "listen_addresses": "''",
    "fsync": "on",
    "synchronous_commit": "on",
}


def postgres_bin() -> Path | None:
    """Debian's server programs (off PATH there: the newest version), else PATH's."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda pg_ctl: int(pg_ctl.parts[-3]) if pg_ctl.parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def os_user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    """A port no one listens on (the server listens on its socket only: the port names it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ended_within(process: subprocess.Popen[str], seconds: float) -> bool:
    """Whether `process` ends within `seconds`; never waits longer (it may be held by a
    freeze, where a kill would not end it either)."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def status(state: Path) -> str:
    return run_kit("status", state=state, timeout=30).stdout


def nothing_frozen_within(state: Path, seconds: float) -> bool:
    """Whether the kit's status says "nothing frozen" within `seconds` (a guard's thaw
    clears its state just after the file system thaws)."""
    deadline = time.monotonic() + seconds
    while "nothing frozen" not in status(state):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def processes_mentioning(path: Path) -> list[str]:
    """Command lines of the running processes that name `path` (e.g. the guard's copy)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if str(path) in words:
                found.append(words)
    return found


@dataclass
class Cluster:
    """A test server: its data directory on the loop-mounted file system (`mount`, what the
    kit must freeze), its socket and log in `run_dir`, which is never frozen."""

    bin_dir: Path
    run_dir: Path
    port: int
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def mount(self) -> Path:
        return self.run_dir / "fs"

    @property
    def pgdata(self) -> Path:
        return self.mount / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "server"

    def as_os_user(self, program: str, *args: str) -> list[str]:
        return ["runuser", "-u", OS_USER, "--", str(self.bin_dir / program), *args]

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """A command that cannot meet a frozen file system (before a freeze, after a thaw)."""
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=self.run_dir, check=False
        )

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.as_os_user("pg_ctl", "-D", str(self.pgdata), *args))

    def background(self, argv: list[str]) -> subprocess.Popen[str]:
        """A command that may block on the freeze: started, watched, ended after the thaw."""
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.run_dir
        )
        self.processes.append(process)
        return process

    def session(self, sql: str) -> subprocess.Popen[str]:
        """A psql session running `sql`, in the background."""
        server = ["-h", str(self.socket_dir), "-p", str(self.port)]
        return self.background(self.as_os_user("psql", "-XAt", *server, "-c", sql))

    def query(self, sql: str, within: float = 10) -> str:
        """`sql`'s output, which must come within `within` seconds."""
        session = self.session(sql)
        assert ended_within(session, within), f"{sql!r} still runs after {within} s"
        out, err = session.communicate()
        assert session.returncode == 0, err
        return out.strip()

    def freeze(
        self, state: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The kit's `freeze postgres`, told how to reach this server (its --os-user stays
        the default, postgres)."""
        server = ["--host", str(self.socket_dir), "--port", str(self.port)]
        return run_kit("freeze", "postgres", *server, *args, state=state, env=env, timeout=60)

    def thaw(self) -> None:
        """Thaw the file system directly (not through the kit, whose thaw is under test),
        then end the processes that the freeze held."""
        subprocess.run(["fsfreeze", "-u", str(self.mount)], capture_output=True, check=False)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=10)


@contextlib.contextmanager
def thawed_after(cluster: Cluster) -> Iterator[None]:
    """No freeze outlives the block, even when an assertion in it fails."""
    try:
        yield
    finally:
        cluster.thaw()


def executable(path: Path, script: str) -> Path:
    path.write_text(script)
    path.chmod(0o755)
    return path


def start_cluster(cluster: Cluster) -> None:
    """initdb, configure, start; then one table holding one row."""
    pgdata = ["-D", str(cluster.pgdata)]
    made = cluster.run(cluster.as_os_user("initdb", *pgdata, *INITDB_OPTIONS))
    assert made.returncode == 0, made.stderr
    settings = SETTINGS | {
        "unix_socket_directories": f"'{cluster.socket_dir}'",
        "port": str(cluster.port),
    }
    with (cluster.pgdata / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    log = cluster.socket_dir / "server.log"
    started = cluster.pg_ctl("-l", str(log), "-w", "-t", "30", "start")
    assert started.returncode == 0, started.stdout + started.stderr + log.read_text()
    cluster.query(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, note text NOT NULL)")
    cluster.query(f"INSERT INTO {TABLE} VALUES (1, 'before')")


@pytest.fixture
def cluster(loop_mount: Path) -> Iterator[Cluster]:
    """A fresh cluster on the loop-mounted file system, running as `postgres`; thawed, then
    stopped (immediate) after the test."""
    bin_dir = postgres_bin()
    if bin_dir is None or not os_user_exists(OS_USER):
        pytest.skip(f"needs PostgreSQL's server and its `postgres` OS user: {INSTALL}")
    # The test's tmp dir is root's alone: `postgres` reaches the file system through a bind
    # mount in a directory it may traverse, on the tmpfs (never frozen) when there is one.
    shm = Path("/dev/shm")
    run_dir = Path(tempfile.mkdtemp(prefix="prepost-pg-", dir=shm if shm.is_dir() else None))
    run_dir.chmod(0o755)
    cluster = Cluster(bin_dir=bin_dir, run_dir=run_dir, port=free_port())
    cluster.mount.mkdir()
    cluster.socket_dir.mkdir()
    shutil.chown(cluster.socket_dir, OS_USER, OS_USER)
    bound = cluster.run(["mount", "--bind", str(loop_mount), str(cluster.mount)])
    if bound.returncode != 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        pytest.skip(f"cannot bind-mount the loop file system: {bound.stderr.strip()}")
    try:
        cluster.pgdata.mkdir()
        shutil.chown(cluster.pgdata, OS_USER, OS_USER)
        start_cluster(cluster)
        yield cluster
    finally:
        cluster.thaw()
        cluster.pg_ctl("-m", "immediate", "stop")
        cluster.run(["umount", "-l", str(cluster.mount)])
        if not os.path.ismount(cluster.mount):
            shutil.rmtree(run_dir, ignore_errors=True)


def test_freeze_holds_writes_serves_reads_until_thaw(cluster: Cluster, state: Path) -> None:
    with thawed_after(cluster):
        frozen = cluster.freeze(state, "--max-seconds", "60")
        assert frozen.returncode == 0, frozen.stderr
        assert "checkpoint done" in frozen.stdout
        assert f"froze {cluster.mount}" in frozen.stdout
        assert cluster.query(f"SELECT note FROM {TABLE}", within=5) == "before"

        write = cluster.session(f"INSERT INTO {TABLE} VALUES (2, 'during')")
        assert not ended_within(write, 2), "a commit went through a frozen file system"
        # Reads are still served while a commit waits; its row is not visible yet.
        assert cluster.query(f"SELECT count(*) FROM {TABLE}", within=5) == "1"

        thawed = run_kit("thaw", state=state, timeout=15)
        assert thawed.returncode == 0, thawed.stderr
        assert f"thawed {cluster.mount}" in thawed.stdout
        assert ended_within(write, 5), "the commit is still held after the thaw"
        assert write.returncode == 0, write.communicate()[1]
        assert cluster.query(f"SELECT note FROM {TABLE} WHERE id = 2") == "during"
        assert "nothing frozen" in status(state)


def test_guard_thaws_when_no_thaw_comes(cluster: Cluster, state: Path) -> None:
    max_seconds = 6  # room for a slow machine to see the commit held before the guard ends
    with thawed_after(cluster):
        frozen = cluster.freeze(state, "--max-seconds", str(max_seconds))
        since = time.monotonic()
        assert frozen.returncode == 0, frozen.stderr
        write = cluster.session(f"INSERT INTO {TABLE} VALUES (2, 'during')")
        assert not ended_within(write, max_seconds - 1.5), "a commit went through the freeze"

        assert ended_within(write, max_seconds + 5 - (time.monotonic() - since)), (
            f"the commit is still held {max_seconds + 5} s after a {max_seconds} s freeze"
        )
        assert write.returncode == 0, write.communicate()[1]
        assert nothing_frozen_within(state, 5)
        assert f"no thaw within {max_seconds} s" in (state / "guard.log").read_text()
        assert cluster.query(f"SELECT note FROM {TABLE} WHERE id = 2") == "during"


def test_guard_thaws_when_the_pre_script_is_killed_once_frozen(
    cluster: Cluster, state: Path, tmp_path: Path
) -> None:
    # An fsfreeze that freezes for real, then stalls: the kill lands after the freeze took
    # effect, before the kit went on (as when a timeout strikes a slow fsfreeze -f).
    froze = tmp_path / "froze"
    stalling = executable(
        tmp_path / "fsfreeze",
        f'#!/bin/sh\nfsfreeze "$@" || exit\n[ "$1" = -f ] || exit 0\ntouch {froze}\nsleep 60\n',
    )
    max_seconds = 3
    env = {"PREPOST_FREEZE_STATE_DIR": str(state), "PREPOST_FSFREEZE": str(stalling)}
    server = ["--host", str(cluster.socket_dir), "--port", str(cluster.port)]
    with thawed_after(cluster), (tmp_path / "kit.out").open("w") as out:
        kit = subprocess.Popen(
            ["bash", str(KIT), "freeze", "postgres", "--max-seconds", str(max_seconds), *server],
            env=os.environ | env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not froze.exists() and kit.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert froze.exists(), (tmp_path / "kit.out").read_text()
        finally:
            # As an agent ends a timed-out command: its whole process group at once.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(kit.pid, signal.SIGKILL)
        since = time.monotonic()
        assert kit.wait(timeout=5) == -signal.SIGKILL

        write = cluster.session(f"INSERT INTO {TABLE} VALUES (2, 'during')")
        assert ended_within(write, max_seconds + 5 - (time.monotonic() - since)), (
            f"the file system is still frozen {max_seconds + 5} s after the kit was killed"
        )
        assert write.returncode == 0, write.communicate()[1]
        assert nothing_frozen_within(state, 5)


def test_explicit_pgdata_is_not_asked_of_the_server(cluster: Cluster, state: Path) -> None:
    # A psql that tells how it is called (it runs as postgres: it lies in run_dir).
    recording = executable(
        cluster.run_dir / "psql", '#!/bin/sh\necho "psql called: $*" >&2\nexec psql "$@"\n'
    )
    with thawed_after(cluster):
        frozen = cluster.freeze(
            state, "--pgdata", str(cluster.pgdata), env={"PREPOST_PSQL": str(recording)}
        )
        assert frozen.returncode == 0, frozen.stderr
        calls = [line for line in frozen.stderr.splitlines() if "psql called" in line]
        assert len(calls) == 1, calls
        assert calls[0].endswith("-c CHECKPOINT")
        assert f"froze {cluster.mount}" in frozen.stdout
        assert str(cluster.mount) in status(state)
        thawed = run_kit("thaw", state=state, timeout=15)
        assert f"thawed {cluster.mount}" in thawed.stdout


@pytest.fixture
def directory_on_root() -> Iterator[Path]:
    """A fresh directory on the root file system (the container's own, here)."""
    for candidate in ("/var/tmp", "/var/lib", "/srv", "/opt"):
        if not Path(candidate).is_dir():
            continue
        found = subprocess.run(
            ["findmnt", "-n", "-o", "TARGET", "--target", candidate],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.stdout.strip() == "/":
            path = Path(tempfile.mkdtemp(prefix="prepost-pg-root-", dir=candidate))
            yield path
            shutil.rmtree(path, ignore_errors=True)
            return
    pytest.skip("no directory on the root file system here")


def test_data_directory_on_the_root_file_system_is_refused(
    directory_on_root: Path, state: Path, tmp_path: Path
) -> None:
    # Never freeze / here: an fsfreeze that only records, should the kit get that far; and
    # no server, so that a kit asking it first would fail otherwise (exit 1).
    called = tmp_path / "fsfreeze-called"
    recording = executable(tmp_path / "fsfreeze", f'#!/bin/sh\necho "$*" >> {called}\nexit 1\n')
    args = ["--pgdata", str(directory_on_root), "--host", str(tmp_path / "no-server")]
    env = {"PREPOST_FSFREEZE": str(recording)}
    refused = run_kit(
        "freeze", "postgres", *args, "--max-seconds", "5", state=state, env=env, timeout=30
    )
    assert refused.returncode == 2, refused.stderr
    assert "refusing to freeze /" in refused.stderr
    assert not called.exists()
    assert not (state / "guard.pid").exists()
    assert "nothing frozen" in status(state)


@pytest.mark.parametrize(
    ("pgdata_given", "failure"),
    [
        pytest.param(True, "CHECKPOINT failed", id="pgdata-given"),
        pytest.param(False, "cannot ask PostgreSQL for its data directory", id="pgdata-asked"),
    ],
)
def test_server_down_freezes_nothing(
    cluster: Cluster, state: Path, pgdata_given: bool, failure: str
) -> None:
    stopped = cluster.pg_ctl("-m", "fast", "-w", "stop")
    assert stopped.returncode == 0, stopped.stderr
    with thawed_after(cluster):
        pgdata = ["--pgdata", str(cluster.pgdata)] if pgdata_given else []
        failed = cluster.freeze(state, "--max-seconds", "60", *pgdata)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert failure in failed.stderr
        assert "froze" not in failed.stdout
        assert "nothing frozen" in status(state)
        assert not (state / "guard.pid").exists()
        assert processes_mentioning(state) == []
        written = cluster.background(["touch", str(cluster.mount / "written")])
        assert ended_within(written, 5), "the file system was left frozen"
