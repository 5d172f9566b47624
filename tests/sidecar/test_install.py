"""The sidecar installs and runs with only ``pip install '.[sidecar]'``: no server code, no
Vault, HTTP-client, store or server metrics libraries.

A fresh virtual environment gets exactly the closure of the requirements pyproject.toml
declares for the sidecar (base dependencies + the ``sidecar`` extra, followed through each
installed distribution's own requirements), linked file by file from this environment (no
network, no index), plus the sidecar's own packages. The sidecar then starts in it, isolated
(``-I``: no PYTHONPATH, no current folder), and streams a click to a gRPC receiver. An import
of ``server`` or of anything only the server declares fails here.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as metadata
import json
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.sidecar.fakes import FakeServer
from tests.sidecar.helpers import click_record, http_request, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Declared by the server extra (or the server's code) and never to be needed by the edge.
SERVER_ONLY = (
    "server",
    "client",
    "hvac",
    "httpx",
    "requests",
    "prometheus_client",
    "grpc_reflection",
    "grpc_status",
)


def sidecar_closure() -> set[str]:
    """Canonical names of the distributions `pip install '.[sidecar]'` installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [
        Requirement(r)
        for r in [*project["dependencies"], *project["optional-dependencies"]["sidecar"]]
    ]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.distribution(name).requires or []:
            child = Requirement(text)
            extras = requirement.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return seen


def link_distribution(name: str, site: Path, target: Path) -> None:
    dist = metadata.distribution(name)
    for file in dist.files or []:
        source = Path(str(dist.locate_file(file))).resolve()
        try:
            relative = source.relative_to(site)
        except ValueError:
            continue  # console scripts and other files outside site-packages
        if "__pycache__" in relative.parts or not source.exists():
            continue
        dest = target / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(source)


@pytest.fixture(scope="module")
def edge_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("edge-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    closure = sidecar_closure()
    assert not closure & {"hvac", "httpx", "requests", "prometheus-client"}, closure
    for name in closure:
        link_distribution(name, site, target)
    for package in (ROOT / "ingest_sidecar", ROOT / "elido_common", ROOT / "protos" / "elido"):
        (target / package.name).symlink_to(package)
    return python


def test_sidecar_imports_nothing_of_the_server(edge_python: Path, tmp_path: Path) -> None:
    check = f"""
import importlib.util, sys
import ingest_sidecar.__main__
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r})
missing = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is None]
print(loaded, missing)
"""
    result = subprocess.run(
        [str(edge_python), "-I", "-c", check], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    # Nothing of the server was imported, and none of it is even installed.
    assert result.stdout.strip() == f"[] {list(SERVER_ONLY)!r}"


async def test_sidecar_runs_from_the_edge_install(edge_python: Path, tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    config = tmp_path / "sidecar.toml"
    config.write_text(f"""
[http]
port = 0
[spool]
directory = "{tmp_path / "spool"}"
[stream]
target = "{server.target}"
batch_linger_ms = 5
""")
    log = tmp_path / "sidecar.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(edge_python),
            "-I",
            "-m",
            "ingest_sidecar",
            "--config",
            str(config),
            cwd=tmp_path,
            stderr=stderr,
            env={"ELIDO_SIDECAR_STREAM_TOKEN": "edge-token", "PATH": "/usr/bin:/bin"},
        )
    try:
        port = 0

        def listening() -> bool:
            nonlocal port
            assert proc.returncode is None, log.read_text()
            for line in log.read_text().splitlines():
                if '"http_listening"' in line:
                    port = json.loads(line)["port"]
            return port != 0

        await wait_for(listening, within_s=30)
        status, _, body = await http_request(
            port, "POST", "/v1/clicks", json.dumps(click_record(7)).encode()
        )
        assert status == 202, body
        await wait_for(lambda: "c-00000007" in server.received.clicks, within_s=30)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
        await server.stop()
    assert proc.returncode == 0, log.read_text()
