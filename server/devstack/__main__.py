"""``make run``: a local OpenBao plus the forwarder, wired together for development.

``python -m server.devstack [--vault-only]``. Everything lives under ``FORWARDER_DATA_DIR``
(default ``./var``): OpenBao's storage and its init file (unseal key and root token, mode
0600: a development convenience only), the development bearer tokens, and the forwarder's
SQLite database. Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops the forwarder first (it
drains) and OpenBao last; if the devstack itself is killed, both get SIGTERM from the kernel
(see ``_lifetime``), and a stale one from an earlier run is reported precisely.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from server._files import private_dir, warn_if_wider
from server.devstack._config import DevstackConfig
from server.devstack._lifetime import Children, die_with_parent
from server.devstack._openbao import (
    AppRoleCredentials,
    OpenBaoError,
    OpenBaoServer,
    PortInUseError,
    port_is_free,
)
from server.devstack._tokens import DevToken, ensure_dev_tokens

FORWARDER_ENV_FILE = "forwarder.env"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.devstack",
        description="Run a local OpenBao and the forwarder for development.",
    )
    parser.add_argument(
        "--vault-only",
        action="store_true",
        help="start only OpenBao and write the forwarder's settings to <data dir>/forwarder.env",
    )
    args = parser.parse_args(argv)
    try:
        config = DevstackConfig.from_env(os.environ, vault_only=args.vault_only)
    except ValueError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    return run(config)


def run(config: DevstackConfig) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # SIGHUP: the terminal closed. Stop in order, as for Ctrl-C.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        return _run(config, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(config: DevstackConfig, stop: threading.Event) -> int:
    data_dir = config.data_dir.resolve()
    # OpenBao's unseal key, the dev tokens and the database: the service's user only.
    private_dir(data_dir)
    for path, mode in warn_if_wider([data_dir, *data_dir.glob("*.json"), data_dir / "openbao"]):
        _say(f"{path} is mode {mode:04o}, readable by other users; chmod go-rwx it", error=True)
    children = Children(data_dir)
    stale = children.stale()
    if stale:
        for process in stale:
            _say(process.describe(data_dir), error=True)
        return 1
    openbao = OpenBaoServer(data_dir / "openbao", host=config.vault_host, port=config.vault_port)
    try:
        openbao.start()
        if openbao.pid is not None:
            children.add("openbao", openbao.pid)
    except PortInUseError:
        _say(
            f"port {config.vault_port} on {config.vault_host} is already in use, so the local "
            "OpenBao cannot start. Stop whatever holds it (an earlier `make run`?) or choose "
            "another port with DEVSTACK_VAULT_PORT=<port>.",
            error=True,
        )
        return 1
    except OpenBaoError as exc:
        _say(f"OpenBao failed to start: {exc}", error=True)
        return 1
    try:
        credentials = openbao.approle_credentials()
        tokens = ensure_dev_tokens(data_dir)
        env = _forwarder_env(config, data_dir, openbao, credentials)
        _say(f"OpenBao {openbao.addr} (data in {openbao.data_dir}; unsealed from init.json)")
        _print_usage(config, tokens)
        if config.vault_only:
            return _wait_vault_only(data_dir, env, stop)
        return _run_forwarder(config, env, stop, children)
    finally:
        openbao.stop()
        children.clear()
        _say("OpenBao stopped")


def _forwarder_env(
    config: DevstackConfig,
    data_dir: Path,
    openbao: OpenBaoServer,
    credentials: AppRoleCredentials,
) -> dict[str, str]:
    # A VAULT_TOKEN or VAULT_NAMESPACE from the developer's shell belongs to some other vault.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(
        {
            "FORWARDER_DATA_DIR": str(data_dir),
            "FORWARDER_LISTEN": config.listen,
            "FORWARDER_DB_PATH": str(data_dir / "forwarder.db"),
            "FORWARDER_TOKENS_FILE": str(data_dir / "tokens.json"),
            "FORWARDER_LOG_FORMAT": "console",
            "VAULT_ADDR": openbao.addr,
            "VAULT_ROLE_ID": credentials.role_id,
            "VAULT_SECRET_ID": credentials.secret_id,
        }
    )
    return env


def _print_usage(config: DevstackConfig, tokens: list[DevToken]) -> None:
    grpcurl = Path(sys.executable).parent / "grpcurl"
    grpcurl_cmd = str(grpcurl) if grpcurl.exists() else "grpcurl"
    admin = next(t for t in tokens if t.role == "admin")
    ingest = next(t for t in tokens if t.role == "ingest")
    header = shlex.quote(f"authorization: Bearer {admin.token}")
    _say(f"dev tokens (kept in {config.data_dir}/dev-tokens.json):")
    _say(f"  admin:  {admin.token}")
    _say(f"  ingest: {ingest.token}")
    _say("call the forwarder with grpcurl, e.g.:")
    _say(f"  {grpcurl_cmd} -plaintext -H {header} {config.listen} list")


def _wait_vault_only(data_dir: Path, env: dict[str, str], stop: threading.Event) -> int:
    env_file = data_dir / FORWARDER_ENV_FILE
    keys = [k for k in env if k.startswith(("VAULT_", "FORWARDER_"))]
    lines = "".join(f"export {k}={shlex.quote(env[k])}\n" for k in keys)
    # Holds the AppRole secret_id, hence 0600 like the other development secrets.
    env_file.unlink(missing_ok=True)
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(lines)
    _say(f"vault only: run the forwarder with  . {env_file} && python -m server")
    _say("ready (Ctrl-C stops OpenBao)")
    stop.wait()
    return 0


def _run_forwarder(
    config: DevstackConfig, env: dict[str, str], stop: threading.Event, children: Children
) -> int:
    host, _, port = config.listen.rpartition(":")
    if port.isdigit() and int(port) and not port_is_free(host or "127.0.0.1", int(port)):
        _say(
            f"{config.listen} is already in use, so the forwarder cannot listen there. Stop "
            "whatever holds it (`ss -ltnp 'sport = :" + port + "'` names it) or choose "
            "another address with DEVSTACK_LISTEN=<host:port>.",
            error=True,
        )
        return 1
    _say(f"starting the forwarder on {config.listen}")
    # Its own session: a terminal Ctrl-C reaches only us, and we stop it in order (SIGTERM,
    # wait for the drain) before OpenBao goes away underneath it. If we die, so does it.
    child = subprocess.Popen(  # noqa: S603 -- fixed argv, no shell
        list(config.forwarder_argv),
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    children.add("forwarder", child.pid)
    _say("ready (Ctrl-C stops the forwarder, then OpenBao)")
    while not stop.is_set():
        try:
            code = child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        _say(f"the forwarder exited with status {code}", error=code != 0)
        return code
    _say("stopping the forwarder (waiting for it to drain)")
    child.send_signal(signal.SIGTERM)
    try:
        code = child.wait(timeout=config.forwarder_grace_s)
    except subprocess.TimeoutExpired:
        _say(f"the forwarder did not stop within {config.forwarder_grace_s:g}s; killing it")
        child.kill()
        code = child.wait()
    return 0 if code in (0, -signal.SIGTERM) else code


def _say(message: str, *, error: bool = False) -> None:
    print(f"devstack: {message}", file=sys.stderr if error else sys.stdout, flush=True)


if __name__ == "__main__":
    sys.exit(main())
