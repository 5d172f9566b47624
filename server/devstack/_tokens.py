"""Development bearer tokens for the local forwarder.

The raw tokens are kept in ``dev-tokens.json`` (mode 0600, created once, reused by every later
``make run``) so a developer can paste them into grpcurl; the forwarder only ever sees their
SHA-256 hashes, in ``tokens.json`` (the format ``FORWARDER_TOKENS_FILE`` expects).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from server.devstack._openbao import write_private_json

DEV_TOKENS_FILE: Final = "dev-tokens.json"
TOKENS_FILE: Final = "tokens.json"
# (name, role) of the tokens a developer gets.
DEV_ROLES: Final = (("dev-admin", "admin"), ("dev-ingest", "ingest"))


@dataclass(frozen=True, slots=True)
class DevToken:
    name: str
    role: str
    token: str = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.token.encode("utf-8")).hexdigest()


def ensure_dev_tokens(data_dir: Path) -> list[DevToken]:
    """Load or create the development tokens; (re)write the hashed tokens file."""
    raw_path = data_dir / DEV_TOKENS_FILE
    tokens: list[DevToken] = []
    if raw_path.exists():
        saved = json.loads(raw_path.read_text(encoding="utf-8"))
        tokens = [DevToken(t["name"], t["role"], t["token"]) for t in saved["tokens"]]
    have = {t.name for t in tokens}
    missing = [DevToken(n, r, secrets.token_urlsafe(32)) for n, r in DEV_ROLES if n not in have]
    if missing or not raw_path.exists():
        tokens += missing
        write_private_json(
            raw_path,
            {"tokens": [{"name": t.name, "role": t.role, "token": t.token} for t in tokens]},
        )
    hashed = {"tokens": [{"name": t.name, "role": t.role, "sha256": t.sha256} for t in tokens]}
    write_private_json(data_dir / TOKENS_FILE, hashed)
    return tokens
