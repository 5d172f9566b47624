"""StreamClicks through the intake worker processes: order within a stream, and a worker
SIGKILLed mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from client import AsyncForwarderClient, ClientConfig
from tests.support.calls import make_click, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def intake_workers(parent: int) -> list[int]:
    """The forwarder's worker processes (spawned children, not the resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().split()[3])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if ppid == parent and b"multiprocessing.spawn" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_the_forwarder_runs_its_intake_workers(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_INTAKE_WORKERS": "2"})
    assert fwd.process is not None
    assert len(intake_workers(fwd.process.pid)) == 2


@pytest.mark.slow
async def test_sigkill_of_an_intake_worker_mid_stream_loses_nothing(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory(
        env={"FORWARDER_INTAKE_WORKERS": "2", "FORWARDER_DELIVERY": "off"}
    )
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    assert fwd.process is not None
    victims = intake_workers(fwd.process.pid)
    total = 20_000

    async def clicks() -> AsyncIterator[pb.Click]:
        for i in range(total):
            if i == total // 4:
                for pid in victims:  # every worker: whichever lane this stream has
                    os.kill(pid, signal.SIGKILL)
            yield make_click(ws, f"w-{i}", email=f"u{i % 100}@example.com")

    config = ClientConfig(target=fwd.target, token=fwd.ingest_token, default_timeout_s=30)
    dispositions: list[int] = []
    async with AsyncForwarderClient(config) as client:
        async for ack in client.stream_clicks(clicks(), batch_size=500):
            dispositions.extend(r.disposition for r in ack.results)
    assert len(dispositions) == total
    # A batch committed just before its worker died is resent and answered DUPLICATE.
    assert set(dispositions) <= {pb.CLICK_DISPOSITION_QUEUED, pb.CLICK_DISPOSITION_DUPLICATE}
    [(rows, distinct)] = fwd.database.rows(
        "SELECT count(*), count(DISTINCT source_id) FROM outbox WHERE workspace_id = ?", ws
    )
    assert rows == distinct == total
    assert "intake worker died" in fwd.logs()
    deadline = time.monotonic() + 10
    while len(intake_workers(fwd.process.pid)) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls /proc: no event to wait on
        await asyncio.sleep(0.1)
    assert not set(victims) & set(intake_workers(fwd.process.pid))


def test_workers_exit_when_the_server_is_killed(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_INTAKE_WORKERS": "2"})
    assert fwd.process is not None
    workers = intake_workers(fwd.process.pid)
    assert len(workers) == 2
    fwd.kill()  # SIGKILL: no shutdown code runs in the server
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
                 and b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
    assert not alive, f"orphaned intake workers: {alive}"
