"""The real forwarder server as a subprocess, for end-to-end and fault tests.

``ForwarderProcess`` runs ``python -m server`` with its own store (a SQLite file, or a
PostgreSQL database when given ``database_url``), token file and port (bound to port 0,
reported through ``FORWARDER_PORT_FILE``), talking to a real OpenBao and to whatever Klaviyo
URL it is given. Replicas share a store: pass the same ``database_url`` (or the same
``FORWARDER_DB_PATH``) to several. It can be stopped gracefully (SIGTERM), killed (SIGKILL)
and restarted on the same data. Its stderr (the JSON logs) is kept in a file so tests can
search it for leaked secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc

from tests.support.database import Database
from tests.support.openbao import VaultFixture

REPO = Path(__file__).resolve().parents[2]


class ForwarderProcess:
    """One forwarder server process and the files it owns."""

    def __init__(
        self,
        data_dir: Path,
        vault_addr: str,
        vault_token: str,
        klaviyo_url: str = "http://127.0.0.1:9",
        env: Mapping[str, str] | None = None,
        database_url: str = "",
    ) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_urlsafe(24)
        self.ingest_token = secrets.token_urlsafe(24)
        tokens = [
            {
                "name": "test-admin",
                "role": "admin",
                "sha256": hashlib.sha256(self.admin_token.encode()).hexdigest(),
            },
            {
                "name": "test-ingest",
                "role": "ingest",
                "sha256": hashlib.sha256(self.ingest_token.encode()).hexdigest(),
            },
        ]
        (data_dir / "tokens.json").write_text(json.dumps({"tokens": tokens}))
        self.db_path = data_dir / "forwarder.db"
        self.log_path = data_dir / "forwarder.log"
        self.port_file = data_dir / "port"
        self.env = {
            **os.environ,
            "FORWARDER_LISTEN": "127.0.0.1:0",
            "FORWARDER_PORT_FILE": str(self.port_file),
            "FORWARDER_DB_PATH": str(self.db_path),
            "FORWARDER_TOKENS_FILE": str(data_dir / "tokens.json"),
            "FORWARDER_LOG_FORMAT": "json",
            "FORWARDER_LOG_LEVEL": "debug",
            "FORWARDER_GRACE_S": "5",
            "FORWARDER_POLL_INTERVAL_S": "0.2",
            "FORWARDER_RETRY_BASE_S": "0.2",
            "FORWARDER_RETRY_MAX_DELAY_S": "2",
            "FORWARDER_VAULT_RETRY_S": "0.5",
            "FORWARDER_VAULT_TIMEOUT_S": "2",
            "VAULT_ADDR": vault_addr,
            "VAULT_TOKEN": vault_token,
            "KLAVIYO_BASE_URL": klaviyo_url,
            # Replicas sharing a store need distinct lease owners.
            "FORWARDER_INSTANCE_ID": data_dir.name,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")]),
            **({"FORWARDER_DATABASE_URL": database_url} if database_url else {}),
            **(env or {}),
        }
        self.database = (
            Database(postgres_url=database_url)
            if database_url
            else Database(sqlite_path=Path(self.env["FORWARDER_DB_PATH"]))
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._channel: grpc.Channel | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        self.port_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not self.port_file.exists() or not self.port_file.read_text().strip():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"forwarder exited with {self.process.returncode}:\n{self.logs()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"forwarder did not start:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait for the graceful drain; returns the exit code."""
        self._close_channel()
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(
                f"forwarder did not drain within {timeout_s}s of SIGTERM:\n{self.logs()[-3000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup — what a crash looks like."""
        self._close_channel()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return self._channel

    def stub(self) -> pb_grpc.ForwarderServiceStub:
        return pb_grpc.ForwarderServiceStub(self.channel())

    def admin(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.admin_token}")]

    def ingest(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.ingest_token}")]

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


@pytest.fixture
def store_backend() -> str:
    """Which store the forwarders of a test use; a module overrides it with a parametrized
    fixture of the same name to run its tests on both (see :data:`BACKENDS`)."""
    return "sqlite"


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def forwarder_factory(
    tmp_path: Path, openbao: VaultFixture, store_backend: str, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """Builds started forwarders (stopped at teardown): ``forwarder_factory(klaviyo_url=...)``.

    On the ``postgres`` backend each forwarder gets a database of its own unless
    ``database_url`` names one (replicas).
    """
    made: list[ForwarderProcess] = []

    def make(
        klaviyo_url: str = "http://127.0.0.1:9",
        env: Mapping[str, str] | None = None,
        vault: VaultFixture | None = None,
        name: str = "forwarder",
        database_url: str = "",
    ) -> ForwarderProcess:
        v = vault or openbao
        if store_backend == "postgres" and not database_url:
            database_url = request.getfixturevalue("postgres_server").create_database()
        process = ForwarderProcess(
            tmp_path / f"{name}-{len(made)}",
            v.addr,
            v.forwarder_token,
            klaviyo_url,
            env,
            database_url=database_url,
        )
        process.start()
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()
