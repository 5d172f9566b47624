"""Issue 14, "Also": a full disk answers UNAVAILABLE/STORE_UNAVAILABLE and loses no ack.

The test mounts a small tmpfs (a real file system that really fills), puts the database on
it, streams clicks until the store cannot commit, and checks every acknowledged click is in
the database — and that the server takes clicks again once space is freed.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.core.test_intake import details
from tests.support.calls import make_click, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id

SIZE = "6m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mount)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no `mount` command: cannot set up a small file system to fill")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {SIZE} tmpfs (needs root/CAP_SYS_ADMIN): {done.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_answers_store_unavailable_and_keeps_every_ack(
    forwarder_factory,  # type: ignore[no-untyped-def]
    small_disk: Path,
) -> None:
    db = small_disk / "forwarder.db"
    fwd: ForwarderProcess = forwarder_factory(
        env={"FORWARDER_DB_PATH": str(db), "FORWARDER_DB_BUSY_TIMEOUT_MS": "500"}
    )
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    # A filler file the test can delete later to give the space back.
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        out.write(b"\0" * (3 << 20))

    acked: list[str] = []
    refused: grpc.RpcError | None = None
    ua = "Mozilla/5.0 " + "x" * 1000
    for batch in range(1, 200):
        clicks = [
            make_click(ws, f"d-{batch}-{i}", "jane@example.com", user_agent=ua) for i in range(200)
        ]
        request = pb.StreamClicksRequest(batch_id=batch, clicks=clicks)
        try:
            (response,) = list(fwd.stub().StreamClicks(iter([request]), metadata=fwd.ingest()))
        except grpc.RpcError as error:
            refused = error
            break
        assert {r.disposition for r in response.results} == {pb.CLICK_DISPOSITION_QUEUED}
        acked.extend(c.click_id for c in clicks)
    assert refused is not None, "the disk never filled"
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert details(refused)[0] == "STORE_UNAVAILABLE"
    assert acked, "nothing was acknowledged before the disk filled"
    assert shutil.disk_usage(small_disk).free < 256 << 10

    # Every acknowledged click is in the database.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        stored = {r[0] for r in conn.execute("SELECT source_id FROM outbox")}
    assert set(acked) <= stored, len(set(acked) - stored)

    # Space back: the server takes clicks again, without a restart.
    filler.unlink()
    reply = fwd.stub().ForwardClick(
        pb.ForwardClickRequest(click=make_click(ws, "d-after", "a@b.co")), metadata=fwd.ingest()
    )
    assert reply.disposition == pb.CLICK_DISPOSITION_QUEUED
    fwd.kill()
    with sqlite3.connect(db) as conn:
        stored = {r[0] for r in conn.execute("SELECT source_id FROM outbox")}
    assert set(acked) | {"d-after"} <= stored
