"""Signed JWTs for Vault's JWT auth method, made with the openssl command line (RS256).

A Kubernetes projected service-account token or a cloud workload identity token is such a
JWT; tests play the issuer with a locally generated RSA key whose public half Vault trusts
(``jwt_validation_pubkeys``).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

ISSUER = "https://issuer.elido.test"
AUDIENCE = "elido-forwarder"
SUBJECT = "system:serviceaccount:elido:forwarder"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class JwtIssuer:
    """An RSA signing key in ``directory`` and the JWTs it signs."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.key_file = directory / "signing.key"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(self.key_file)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.public_pem = subprocess.run(
            ["openssl", "pkey", "-in", str(self.key_file), "-pubout"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    def sign(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key_file)],
            input=signing_input, check=True, capture_output=True,
        ).stdout  # fmt: skip
        return f"{header}.{payload}.{_b64(signature)}"

    def token(self, *, lifetime_s: float = 600.0, issued_ago_s: float = 0.0, **extra: Any) -> str:
        """A JWT as a service-account token would carry it, valid ``lifetime_s`` from issue."""
        issued = int(time.time() - issued_ago_s)
        claims = {
            "iss": ISSUER,
            "sub": SUBJECT,
            "aud": [AUDIENCE],
            "iat": issued,
            "nbf": issued,
            "exp": int(issued + lifetime_s),
            **extra,
        }
        return self.sign(claims)


def enable_jwt_auth(root: Any, mount: str, issuer: JwtIssuer) -> None:
    """Enable the JWT auth method at ``mount`` trusting ``issuer``'s key (root hvac client)."""
    root.sys.enable_auth_method("jwt", path=mount)
    root.auth.jwt.configure(
        jwt_validation_pubkeys=[issuer.public_pem], bound_issuer=ISSUER, path=mount
    )


def create_jwt_role(root: Any, mount: str, name: str, policy: str, **token: Any) -> None:
    """A role bound to the test service account and audience, granting ``policy`` only."""
    root.auth.jwt.create_role(
        name=name,
        role_type="jwt",
        user_claim="sub",
        allowed_redirect_uris=[],
        bound_audiences=[AUDIENCE],
        bound_subject=SUBJECT,
        token_policies=[policy],
        token_no_default_policy=True,
        path=mount,
        **token,
    )
