"""``elido-fwd tokens``: the forwarder's bearer-token file, edited locally.

The file (``FORWARDER_TOKENS_FILE`` of the server) holds, per caller, a name, its roles and
the SHA-256 of its token, never the token itself::

    {"tokens": [{"name": "edge-sidecar", "roles": ["ingest"], "sha256": "<64 hex digits>"}]}

A new token is 256 random bits, shown once (stdout, or a new 0600 file with ``--out``). Every
change rewrites the file atomically (a 0600 temporary file in the same folder, fsynced, then
renamed over it) under an exclusive lock, so the forwarder reading it on SIGHUP sees the old
file or the new one, never half of one, and two operators cannot lose each other's changes.
The forwarder applies the file on SIGHUP (or restart).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, TextIO

from client.cli import _output as out
from client.cli._exit import CliError, ExitCode

ENV_TOKENS_FILE: Final = "FORWARDER_TOKENS_FILE"
ROLES: Final = ("admin", "ingest")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def _path(args: argparse.Namespace, env: Any) -> Path:
    raw = args.file or env.get(ENV_TOKENS_FILE, "")
    if not raw:
        raise CliError(f"say which token file: --file PATH or {ENV_TOKENS_FILE}", ExitCode.USAGE)
    return Path(raw)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise CliError(f"cannot lock {path}: {exc.strerror}", ExitCode.ERROR) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path, *, missing_ok: bool) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return []
        raise CliError(f"no token file at {path}", ExitCode.NOT_FOUND) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CliError(f"cannot read {path}: {reason}", ExitCode.ERROR) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path} is not JSON: {exc.msg} at line {exc.lineno}", ExitCode.ERROR
        ) from None
    items = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise CliError(f'{path}: expected {{"tokens": [{{...}}, ...]}}', ExitCode.ERROR)
    return items


def _write(path: Path, items: list[dict[str, Any]]) -> None:
    data = (json.dumps({"tokens": items}, indent=2) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror}", ExitCode.ERROR) from None


def _roles(item: dict[str, Any]) -> list[str]:
    roles = item.get("roles") or [item.get("role")]
    return [str(r) for r in roles]


def _write_new_secret_file(path: Path, token: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"--out {path} exists; choose a new file", ExitCode.USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot create --out {path}: {exc.strerror}", ExitCode.ERROR) from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


def create(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, env: Any) -> ExitCode:
    path = _path(args, env)
    if _NAME.fullmatch(args.name) is None:
        raise CliError(
            "--name must be 1-64 letters, digits and _.@:- (starting with a letter or digit)",
            ExitCode.INVALID_INPUT,
        )
    roles = sorted(set(args.role))
    token = secrets.token_urlsafe(32)
    entry = {
        "name": args.name,
        "roles": roles,
        "sha256": hashlib.sha256(token.encode()).hexdigest(),
    }
    with _locked(path):
        items = _read(path, missing_ok=True)
        existing = [i for i, item in enumerate(items) if item.get("name") == args.name]
        if existing and not args.replace:
            raise CliError(
                f"a token named {args.name} exists in {path}; --replace rotates it",
                ExitCode.INVALID_INPUT,
            )
        if existing:
            items[existing[0]] = entry
            for i in reversed(existing[1:]):
                del items[i]
        else:
            items.append(entry)
        if args.out:
            _write_new_secret_file(Path(args.out), token)
        _write(path, items)
    verb = "Replaced the token of" if existing else "Created a token for"
    where = f"written to {args.out}" if args.out else "shown once below"
    stderr.write(
        f"{verb} {args.name} ({', '.join(roles)}) in {path}; the token is {where}, only its"
        " SHA-256 is stored. Send SIGHUP to the forwarder to apply.\n"
    )
    if not args.out:
        stdout.write(token + "\n")
    return ExitCode.OK


def list_(args: argparse.Namespace, stdout: TextIO, _stderr: TextIO, env: Any) -> ExitCode:
    path = _path(args, env)
    items = _read(path, missing_ok=False)
    rows: list[dict[str, Any]] = [
        {
            "name": str(item.get("name", f"token-{n}")),
            "roles": _roles(item),
            # A prefix of the hash tells two entries apart; the hash is not the token.
            "sha256_prefix": str(item.get("sha256", ""))[:12],
        }
        for n, item in enumerate(items)
    ]
    if args.json:
        out.write_json(stdout, {"tokens": rows})
    elif rows:
        stdout.write(
            out.table(
                ("NAME", "ROLES", "SHA256"),
                [(str(r["name"]), ",".join(r["roles"]), f"{r['sha256_prefix']}…") for r in rows],
            )
        )
    else:
        stdout.write(f"No tokens in {path}.\n")
    return ExitCode.OK


def revoke(args: argparse.Namespace, _stdout: TextIO, stderr: TextIO, env: Any) -> ExitCode:
    path = _path(args, env)
    with _locked(path):
        items = _read(path, missing_ok=False)
        kept = [item for item in items if item.get("name") != args.name]
        if len(kept) == len(items):
            raise CliError(f"no token named {args.name} in {path}", ExitCode.NOT_FOUND)
        _write(path, kept)
    stderr.write(f"Revoked {args.name} in {path}. Send SIGHUP to the forwarder to apply.\n")
    return ExitCode.OK


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = commands.add_parser(
        "tokens", help="manage the forwarder's bearer-token file (local, no connection)"
    )
    actions = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")

    def leaf(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--file",
            metavar="PATH",
            default=None,
            help=f"the token file (env {ENV_TOKENS_FILE})",
        )
        return parser

    new = leaf("create", "create a token for a name and role; print it once")
    new.add_argument("--name", required=True, help="who uses it; shown in logs and errors")
    new.add_argument("--role", required=True, action="append", choices=ROLES, help="repeatable")
    new.add_argument("--replace", action="store_true", help="rotate the token of an existing name")
    new.add_argument(
        "--out", metavar="PATH", default=None, help="write the token to this new 0600 file instead"
    )
    listing = leaf("list", "list names and roles (never tokens)")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    gone = leaf("revoke", "remove the token of a name")
    gone.add_argument("--name", required=True)


COMMANDS: Final = {"create": create, "list": list_, "revoke": revoke}
