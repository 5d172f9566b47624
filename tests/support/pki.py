"""Throwaway certificates for TLS tests: a CA, a server certificate for localhost, a client one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

_NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """Write ``ca.pem``, ``server.{pem,key}`` and ``client.{pem,key}`` (EC P-256) into ``d``."""
    ca, ca_key = str(d / "ca.pem"), str(d / "ca.key")
    _openssl("req", "-x509", *_NEW_EC_KEY, "-keyout", ca_key, "-out", ca, "-days", "1",
             "-subj", "/CN=test-ca")  # fmt: skip
    for name, extension in (
        ("server", "subjectAltName=DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key, csr, ext = (str(d / f"{name}.{suffix}") for suffix in ("key", "csr", "ext"))
        _openssl("req", *_NEW_EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        Path(ext).write_text(extension + "\n")
        _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "1", "-extfile", ext, "-out", str(d / f"{name}.pem"))  # fmt: skip
    return d


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))
