"""The systemd unit: hardened, and accepted by systemd's own checker where systemd is present.

``systemd-analyze verify`` parses the unit as systemd would (unknown directives and bad values
are reported), and ``systemd-analyze security --offline`` scores its sandboxing; both run when
``systemd-analyze`` is on the machine (Debian ships it with systemd). The parse below runs
everywhere.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY

UNIT = DEPLOY / "systemd" / "elido-forwarder.service"
EXEC = "/opt/elido-forwarder/bin/elido-forwarder"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _directives() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def test_the_unit_parses_into_its_three_sections() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Service"]["ExecStart"] == EXEC


@pytest.mark.parametrize(
    ("directive", "value"),
    [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("StateDirectory", "elido-forwarder"),
        ("UMask", "0077"),
        ("RestartPreventExitStatus", "2"),
    ],
)
def test_hardening_directive(directive: str, value: str) -> None:
    assert value in _directives()[f"Service.{directive}"]


def test_only_internet_and_unix_sockets() -> None:
    (families,) = _directives()["Service.RestrictAddressFamilies"]
    assert set(families.split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_secrets_come_from_credentials_not_the_environment_file() -> None:
    service = _directives()
    credentials = dict(v.split(":", 1) for v in service["Service.LoadCredential"])
    assert set(credentials) == {"tokens.json", "vault-secret-id"}
    env = dict(v.split("=", 1) for v in service["Service.Environment"])
    assert env["FORWARDER_TOKENS_FILE"] == "%d/tokens.json"
    assert env["VAULT_SECRET_ID_FILE"] == "%d/vault-secret-id"
    # The drain (FORWARDER_GRACE_S, 10 s by default) fits in the stop timeout.
    assert int(service["Service.TimeoutStopSec"][0].rstrip("s")) > 10


def _installed_copy(tmp_path: Path, text: str | None = None) -> Path:
    # verify checks that ExecStart exists: point it at this environment's entry point.
    here = Path(sys.executable).parent / "elido-forwarder"
    unit = tmp_path / "elido-forwarder.service"
    unit.write_text((text or UNIT.read_text()).replace(EXEC, str(here)))
    return unit


@needs_systemd
def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@needs_systemd
def test_systemd_analyze_verify_does_report_a_bad_value(tmp_path: Path) -> None:
    assert ANALYZE is not None
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=sometimes")
    result = subprocess.run(
        [ANALYZE, "verify", str(_installed_copy(tmp_path, broken))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "ProtectHome" in result.stderr or "protect home" in result.stderr.lower()


@needs_systemd
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--threshold=20", str(_installed_copy(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    # systemd's scale: 0 (sandboxed) to 10 (exposed); below 2 is "OK".
    (line,) = [x for x in result.stdout.splitlines() if "Overall exposure level" in x]
    exposure = float(line.split(":")[1].split()[0])
    assert exposure < 2.0, line
