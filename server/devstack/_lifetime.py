"""Children that die with the devstack, and stale ones from an earlier run found precisely.

OpenBao and the forwarder run in their own sessions (a terminal's Ctrl-C must reach only the
devstack, which stops them in order). Without more, a devstack killed by SIGKILL or by a
closed terminal leaves both running with parent 1, holding their ports and OpenBao's raft
files. So every child asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``,
Linux), and the devstack records its children in ``devstack.json``: the next ``make run``
tells a process from an earlier run (same pid, same command line) from anything else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

STATE_FILE: Final = "devstack.json"
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the devstack dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _cmdline(pid: int) -> list[str] | None:
    """The command line of a live (not zombie) process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@dataclass(frozen=True, slots=True)
class Stale:
    """A process an earlier devstack started that still runs."""

    role: str  # "openbao" or "forwarder"
    pid: int
    devstack_pid: int
    command: list[str]

    def describe(self, data_dir: Path) -> str:
        what = "OpenBao" if self.role == "openbao" else "forwarder"
        parent = (
            "which is still running" if _cmdline(self.devstack_pid) is not None else "which is gone"
        )
        return (
            f"a {what} from an earlier `make run` is still running: pid {self.pid} "
            f"({' '.join(self.command)[:120]}), started by devstack pid {self.devstack_pid} "
            f"{parent}, recorded in {data_dir / STATE_FILE}. Stop it with `kill {self.pid}` "
            f"(or stop that `make run`) and start again."
        )


class Children:
    """The devstack's record of its children, in ``<data dir>/devstack.json`` (mode 0600)."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / STATE_FILE
        self._children: dict[str, dict[str, object]] = {}

    def stale(self) -> list[Stale]:
        """Processes recorded by an earlier devstack that still run the recorded command."""
        try:
            saved = json.loads(self._path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return []
        found: list[Stale] = []
        for role, child in sorted(saved.get("children", {}).items()):
            pid, command = int(child["pid"]), list(child["command"])
            if pid != os.getpid() and _cmdline(pid) == command:
                found.append(Stale(role, pid, int(saved.get("devstack_pid", 0)), command))
        return found

    def add(self, role: str, pid: int) -> None:
        """Record a child just started."""
        self._children[role] = {"pid": pid, "command": _cmdline(pid) or []}
        tmp = self._path.with_name(self._path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"devstack_pid": os.getpid(), "children": self._children}, fh)
        os.replace(tmp, self._path)

    def clear(self) -> None:
        """Every child stopped: nothing to report next time."""
        self._path.unlink(missing_ok=True)
