"""Issue 14 item 1 (and 5 for the devstack's files): `make run` leaves no orphans.

The real ``python -m server.devstack`` runs on free ports in a temporary data folder, in its
own session as a terminal would run it; the tests kill it, hang up on it, and leave a stale
process behind for the next run to find.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.devstack._openbao import free_port
from tests.docs._devstack import DevStack
from tests.support.calls import wait_for
from tests.support.forwarder import REPO


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def children(data_dir: Path) -> dict[str, int]:
    saved = json.loads((data_dir / "devstack.json").read_text())
    return {role: int(child["pid"]) for role, child in saved["children"].items()}


@pytest.fixture
def devstack(tmp_path: Path):  # type: ignore[no-untyped-def]
    made: list[DevStack] = []

    def start() -> DevStack:
        stack = DevStack(tmp_path / "var", "http://127.0.0.1:9")
        made.append(stack)
        stack.wait_serving()
        return stack

    yield start
    for stack in made:
        if stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()


def test_children_die_when_the_devstack_is_killed(devstack) -> None:  # type: ignore[no-untyped-def]
    stack = devstack()
    pids = children(stack.data_dir)
    assert set(pids) == {"openbao", "forwarder"}
    assert all(alive(pid) for pid in pids.values())
    stack.process.kill()  # SIGKILL: no handler runs, nothing is stopped in order
    stack.process.wait()
    wait_for(
        lambda: not any(alive(pid) for pid in pids.values()),
        timeout_s=30,
        what="OpenBao and the forwarder to exit after their parent died",
    )
    # The next run starts cleanly on the same folder (no stale process, no locked files).
    again = devstack()
    assert set(children(again.data_dir)) == {"openbao", "forwarder"}


def test_sighup_stops_the_stack_like_ctrl_c(devstack) -> None:  # type: ignore[no-untyped-def]
    stack = devstack()
    pids = children(stack.data_dir)
    os.killpg(stack.process.pid, signal.SIGHUP)  # the terminal closed
    assert stack.process.wait(timeout=60) == 0
    output = stack.output()
    assert "stopping the forwarder (waiting for it to drain)" in output
    assert output.rstrip().endswith("devstack: OpenBao stopped")
    assert not any(alive(pid) for pid in pids.values())
    assert not (stack.data_dir / "devstack.json").exists()


def test_the_devstack_files_are_readable_by_their_owner_only(devstack) -> None:  # type: ignore[no-untyped-def]
    old = os.umask(0o022)  # the usual umask: files 0644 unless created otherwise
    try:
        stack = devstack()
    finally:
        os.umask(old)
    data_dir = stack.data_dir
    wait_for(lambda: (data_dir / "forwarder.db-wal").exists(), what="the WAL file")
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in [data_dir, *data_dir.iterdir(), *(data_dir / "openbao").iterdir()]
        if p.name in {"var", "openbao", "forwarder.db", "forwarder.db-wal", "forwarder.db-shm",
                      "tokens.json", "dev-tokens.json", "init.json", "devstack.json"}
    }  # fmt: skip
    assert {"forwarder.db", "forwarder.db-wal", "forwarder.db-shm", "dev-tokens.json"} <= set(modes)
    wider = {name: f"{mode:04o}" for name, mode in modes.items() if mode & 0o077}
    assert wider == {}, wider


@pytest.mark.parametrize("role", ["openbao", "forwarder"])
def test_a_stale_process_from_an_earlier_run_is_reported_precisely(
    tmp_path: Path, role: str
) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    # An orphan of an earlier run (before children died with their parent): still running.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.2)
        command = Path(f"/proc/{orphan.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        (data_dir / "devstack.json").write_text(
            json.dumps(
                {
                    "devstack_pid": 999_999,
                    "children": {role: {"pid": orphan.pid, "command": command}},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "FORWARDER_"))}
        env.update(
            FORWARDER_DATA_DIR=str(data_dir),
            DEVSTACK_VAULT_PORT=str(free_port()),
            DEVSTACK_LISTEN=f"127.0.0.1:{free_port()}",
        )
        done = subprocess.run(
            [sys.executable, "-m", "server.devstack"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        orphan.kill()
        orphan.wait()
    assert done.returncode == 1
    what = "OpenBao" if role == "openbao" else "forwarder"
    assert f"a {what} from an earlier `make run` is still running: pid {orphan.pid}" in done.stderr
    assert f"Stop it with `kill {orphan.pid}`" in done.stderr
    assert "starting" not in done.stdout  # nothing was started


def test_a_forwarder_port_in_use_is_reported_before_starting_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "FORWARDER_"))}
        env.update(
            FORWARDER_DATA_DIR=str(tmp_path / "var"),
            DEVSTACK_VAULT_PORT=str(free_port()),
            DEVSTACK_LISTEN=f"127.0.0.1:{port}",
        )
        done = subprocess.run(
            [sys.executable, "-m", "server.devstack"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is already in use, so the forwarder cannot listen there" in (
        done.stderr
    )
    assert "OpenBao stopped" in done.stdout
