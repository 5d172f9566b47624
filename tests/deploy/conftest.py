"""Helpers for the deployment-artifact tests: where the shipped files and the tools are."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def tool(name: str) -> str | None:
    """A tool from this virtualenv's bin/ (installed by `make`), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)
