"""The kit's MySQL mode against a real MariaDB server that the test session starts itself:
FLUSH TABLES WITH READ LOCK held by a session that outlives the pre-script, let go by the
thaw or by the guard, and nothing left held when a freeze fails or its shell is killed."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.scripts.conftest import INSTALL, KIT, run_kit

DATABASE = "prepost"
# --max-seconds where a test waits for the guard. Room for a slow, busy machine: the test
# must see the write held before the guard ends the lock (a CI run at 3 s saw it released).
MAX_SECONDS = 8
BLOCKED_FOR = 1.0  # a write still waiting this long is held by the lock (unheld: ~10 ms)
PROMPT = 5.0  # what "at once" may take on a busy machine
STARTUP_SECONDS = 60
SERVER_OPTIONS = ("--no-defaults", "--innodb-log-file-size=8M")


@dataclass(frozen=True)
class Tools:
    """The MariaDB (or MySQL) programs the tests run."""

    server: str
    install_db: str
    client: str
    admin: str


def find_tools() -> Tools:
    """The programs, or the test skipped with the command that installs them."""

    def which(*names: str) -> str | None:
        for name in names:
            found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
            if found:
                return found
        return None

    server = which("mariadbd", "mysqld")
    install_db = which("mariadb-install-db", "mysql_install_db")
    client = which("mariadb", "mysql")
    admin = which("mariadb-admin", "mysqladmin")
    # The kit runs `mysql` itself (PREPOST_MYSQL unset), as on an instance.
    if not (server and install_db and client and admin and shutil.which("mysql")):
        pytest.skip(f"a MariaDB server and client are needed: {INSTALL}")
    return Tools(server=server, install_db=install_db, client=client, admin=admin)


@dataclass(frozen=True)
class Server:
    """A MariaDB server of this test session's own, reached as root on its socket."""

    socket: Path
    defaults_file: Path  # [client] socket and user: what --defaults-file points the kit to
    tools: Tools

    def client(self, *args: str) -> list[str]:
        """A client command line, reading only this server's defaults file."""
        return [
            self.tools.client,
            f"--defaults-file={self.defaults_file}",
            "--batch",
            "--skip-column-names",
            *args,
        ]

    def query(self, statement: str) -> str:
        """The statement's output; fails the test if it does not answer promptly."""
        done = subprocess.run(
            self.client("-e", statement),
            capture_output=True,
            text=True,
            timeout=PROMPT,
            check=False,
        )
        assert done.returncode == 0, f"{statement}: {done.stderr}"
        return done.stdout.strip()

    def other_sessions(self) -> int:
        """How many client sessions other than this query's are connected."""
        return int(
            self.query(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
            )
        )


def wait_for(condition: Callable[[], bool], within: float) -> bool:
    """Whether `condition` became true within `within` seconds (polled)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def server_log(home: Path) -> str:
    """The end of the server's error log, for a failure that needs it."""
    log = home / "error.log"
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def admin(tools: Tools, home: Path, *args: str) -> list[str]:
    """A mariadb-admin command line for the server in `home`."""
    return [tools.admin, "--no-defaults", f"--socket={home / 'mysql.sock'}", "--user=root", *args]


def start_server(tools: Tools, home: Path) -> subprocess.Popen[bytes]:
    """A fresh data directory and a server on it, accepting connections (else the test fails)."""
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    installed = subprocess.run(
        [
            tools.install_db,
            *SERVER_OPTIONS,
            f"--datadir={home / 'data'}",
            "--skip-test-db",
            "--auth-root-authentication-method=normal",
            *as_root,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if installed.returncode != 0:
        pytest.fail(f"mariadb-install-db failed: {installed.stdout}{installed.stderr}")
    server = subprocess.Popen(
        [
            tools.server,
            *SERVER_OPTIONS,
            f"--datadir={home / 'data'}",
            f"--socket={home / 'mysql.sock'}",
            "--skip-networking",
            f"--pid-file={home / 'mysql.pid'}",
            f"--log-error={home / 'error.log'}",
            *as_root,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def answers() -> bool:
        if server.poll() is not None:
            pytest.fail(
                f"mariadbd exited ({server.returncode}) before accepting connections:\n"
                f"{server_log(home)}"
            )
        ping = admin(tools, home, "--connect-timeout=2", "ping")
        return subprocess.run(ping, capture_output=True, timeout=10, check=False).returncode == 0

    if not wait_for(answers, within=STARTUP_SECONDS):
        stop_server(tools, home, server)
        pytest.fail(
            f"mariadbd did not accept connections within {STARTUP_SECONDS} s:\n{server_log(home)}"
        )
    return server


def stop_server(tools: Tools, home: Path, server: subprocess.Popen[bytes]) -> None:
    """mariadb-admin shutdown, else kill."""
    subprocess.run(admin(tools, home, "shutdown"), capture_output=True, timeout=60, check=False)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server per xdist worker: its own directory and socket (no ports), on a tmpfs where
    there is one (InnoDB's fsyncs make a disk ~8 times slower to set up)."""
    tools = find_tools()
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    home = Path(tempfile.mkdtemp(prefix="prepost-mariadb-", dir=base))  # a socket path is short
    try:
        process = start_server(tools, home)
        try:
            defaults = home / "client.cnf"
            defaults.write_text(f"[client]\nsocket={home / 'mysql.sock'}\nuser=root\n")
            running = Server(socket=home / "mysql.sock", defaults_file=defaults, tools=tools)
            running.query(f"CREATE DATABASE {DATABASE}")
            yield running
        finally:
            stop_server(tools, home, process)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def table(server: Server) -> str:
    """A fresh InnoDB table of the test's own."""
    name = f"{DATABASE}.t_{uuid.uuid4().hex[:8]}"
    server.query(f"CREATE TABLE {name} (id INT PRIMARY KEY) ENGINE=InnoDB")
    return name


def freeze(server: Server, state: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run_kit(
        "freeze", "mysql", "--socket", str(server.socket), *options, state=state, timeout=60
    )


def status(state: Path) -> str:
    return run_kit("status", state=state, timeout=PROMPT).stdout


def leftovers(state: Path) -> list[str]:
    """The processes this test's kit left running (guard, lock session): every one of them
    inherits the kit's environment, with this test's state directory in it."""
    marker = f"PREPOST_FREEZE_STATE_DIR={state}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # ended meanwhile
            continue
    return found


@contextmanager
def background_write(server: Server, table: str, row: int) -> Iterator[subprocess.Popen[str]]:
    """An INSERT run in the background: under the read lock it waits."""
    write = subprocess.Popen(
        server.client("-e", f"INSERT INTO {table} VALUES ({row})"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield write
    finally:
        write.kill()
        write.communicate()


def assert_blocked(write: subprocess.Popen[str]) -> None:
    try:
        write.wait(timeout=BLOCKED_FOR)
    except subprocess.TimeoutExpired:
        return
    pytest.fail(f"the write ended ({write.returncode}) while the read lock should hold it")


def assert_done(write: subprocess.Popen[str], within: float) -> float:
    """The write went through within `within` seconds; how long it took from now."""
    begun = time.monotonic()
    try:
        _, errors = write.communicate(timeout=max(within, 0.1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the write still waits {within:.1f} s on: the read lock was not released")
    assert write.returncode == 0, errors
    return time.monotonic() - begun


@contextmanager
def table_write_lock(server: Server, table: str) -> Iterator[subprocess.Popen[str]]:
    """Another session holding LOCK TABLES ... WRITE (FLUSH TABLES WITH READ LOCK waits for
    it) until `release` or the end of the block."""
    holder = subprocess.Popen(
        server.client("--unbuffered"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdin
        assert holder.stdout
        holder.stdin.write(f"LOCK TABLES {table} WRITE;\nSELECT 'held';\n")
        holder.stdin.flush()
        ready, _, _ = select.select([holder.stdout], [], [], PROMPT)
        assert ready, "LOCK TABLES did not answer"
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        release(holder)


def release(holder: subprocess.Popen[str]) -> None:
    """End the session holding the table lock (its client reads EOF)."""
    if holder.stdin:
        holder.stdin.close()
    try:
        holder.wait(timeout=PROMPT)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait()


def test_a_freeze_lets_reads_through_and_holds_writes_until_the_thaw(
    server: Server, table: str, state: Path
) -> None:
    frozen = run_kit("freeze", "mysql", "--defaults-file", str(server.defaults_file), state=state)
    assert frozen.returncode == 0, frozen.stderr
    assert "MySQL read lock held by a session that stays open" in frozen.stdout
    assert "MySQL read lock held by session process group" in status(state)

    begun = time.monotonic()
    assert server.query(f"SELECT COUNT(*) FROM {table}") == "0"
    assert time.monotonic() - begun < 2
    with background_write(server, table, 1) as write:
        assert_blocked(write)
        thawed = run_kit("thaw", state=state, timeout=PROMPT)
        assert thawed.returncode == 0, thawed.stderr
        assert "ended the MySQL lock session" in thawed.stdout
        assert "prepost-freeze: thawed" in thawed.stdout
        assert assert_done(write, within=PROMPT) < 2

    assert server.query(f"SELECT id FROM {table}") == "1"
    assert "nothing frozen" in status(state)
    assert wait_for(lambda: not leftovers(state), within=PROMPT), leftovers(state)


def test_the_guard_releases_the_lock_when_no_thaw_comes(
    server: Server, table: str, state: Path
) -> None:
    begun = time.monotonic()
    frozen = freeze(server, state, "--max-seconds", str(MAX_SECONDS))
    assert frozen.returncode == 0, frozen.stderr
    assert f"the guard ends it in {MAX_SECONDS} s" in frozen.stdout

    with background_write(server, table, 1) as write:
        assert_blocked(write)
        assert_done(write, within=begun + MAX_SECONDS + 5 - time.monotonic())
    assert time.monotonic() - begun >= MAX_SECONDS - 0.5  # not released before its time

    assert wait_for(lambda: "nothing frozen" in status(state), within=PROMPT)
    guard_log = (state / "guard.log").read_text()
    assert f"guard: no thaw within {MAX_SECONDS} s" in guard_log
    assert "thawed by the guard" in guard_log
    assert wait_for(lambda: not leftovers(state), within=PROMPT), leftovers(state)


def test_a_killed_pre_script_leaves_no_lock_past_the_guard(
    server: Server, table: str, state: Path
) -> None:
    # The kit is killed (SIGKILL, its whole process group, as a timed-out SSM command)
    # while its session waits for the lock; the session takes it afterwards, orphaned.
    with table_write_lock(server, table) as holder:
        begun = time.monotonic()
        kit = subprocess.Popen(
            [
                "bash",
                str(KIT),
                "freeze",
                "mysql",
                "--socket",
                str(server.socket),
                "--max-seconds",
                str(MAX_SECONDS),
                "--lock-wait-seconds",
                str(MAX_SECONDS - 1),
            ],
            env=os.environ | {"PREPOST_FREEZE_STATE_DIR": str(state)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        session = state / "mysql.pid"
        assert wait_for(lambda: session.is_file() and session.stat().st_size > 0, within=PROMPT)
        os.killpg(kit.pid, signal.SIGKILL)
        kit.communicate(timeout=PROMPT)
        assert kit.returncode == -signal.SIGKILL
        release(holder)

    with background_write(server, table, 1) as write:
        assert_blocked(write)  # the orphaned session holds the read lock now
        assert_done(write, within=begun + MAX_SECONDS + 5 - time.monotonic())

    assert wait_for(lambda: "nothing frozen" in status(state), within=PROMPT)
    assert wait_for(lambda: not leftovers(state), within=PROMPT), leftovers(state)


def test_a_second_thaw_finds_nothing_to_thaw(server: Server, state: Path) -> None:
    assert freeze(server, state).returncode == 0
    first = run_kit("thaw", state=state, timeout=PROMPT)
    assert first.returncode == 0
    assert "prepost-freeze: thawed" in first.stdout

    second = run_kit("thaw", state=state, timeout=PROMPT)
    assert second.returncode == 0, second.stderr
    assert "nothing to thaw" in second.stdout
    assert "MySQL" not in second.stdout


def test_a_thaw_without_a_freeze_says_so_and_succeeds(state: Path) -> None:
    thawed = run_kit("thaw", state=state, timeout=PROMPT)
    assert thawed.returncode == 0, thawed.stderr
    assert "nothing to thaw: no freeze is in place" in thawed.stdout


def test_a_second_freeze_keeps_the_first_and_one_thaw_releases(
    server: Server, table: str, state: Path
) -> None:
    assert freeze(server, state).returncode == 0
    session = (state / "mysql.pid").read_text()
    again = freeze(server, state)
    assert again.returncode == 0, again.stderr
    assert "already frozen since" in again.stdout
    assert (state / "mysql.pid").read_text() == session

    with background_write(server, table, 1) as write:
        assert_blocked(write)
        assert run_kit("thaw", state=state, timeout=PROMPT).returncode == 0
        assert_done(write, within=PROMPT)
    assert wait_for(lambda: not leftovers(state), within=PROMPT), leftovers(state)


def test_a_freeze_that_cannot_reach_the_server_fails_and_leaves_nothing(
    server: Server, tmp_path: Path, state: Path
) -> None:
    begun = time.monotonic()
    failed = run_kit(
        "freeze",
        "mysql",
        "--socket",
        str(tmp_path / "no-server.sock"),
        "--max-seconds",
        "10",
        state=state,
        timeout=60,
    )
    assert failed.returncode == 1
    assert time.monotonic() - begun < PROMPT  # at once, not at the guard's 10 s
    assert "error: the MySQL session ended before it held the lock" in failed.stderr
    assert "Can't connect" in failed.stderr
    assert "nothing frozen" in status(state)
    assert wait_for(lambda: not leftovers(state), within=PROMPT), leftovers(state)


def test_a_lock_wait_that_times_out_fails_and_leaves_nothing(
    server: Server, table: str, state: Path
) -> None:
    with table_write_lock(server, table):
        begun = time.monotonic()
        failed = freeze(server, state, "--lock-wait-seconds", "1", "--max-seconds", "10")
        assert failed.returncode == 1
        assert time.monotonic() - begun < 1 + 4  # after its 1 s wait, not the kit's own 1 + 5 s
        assert "Lock wait timeout exceeded" in failed.stderr
        assert "nothing frozen" in status(state)
        assert wait_for(lambda: not leftovers(state), within=PROMPT), leftovers(state)

    # The kit's session is gone, not waiting to take the lock once the table is free.
    assert wait_for(lambda: server.other_sessions() == 0, within=PROMPT)
    with background_write(server, table, 1) as write:
        assert_done(write, within=PROMPT)
