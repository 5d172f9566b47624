"""From embedded to cluster: `elido-forwarder move-store` copies a SQLite store into an empty
PostgreSQL database, and the replicas deliver what was queued and replay what had failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.klaviyo_mock import Fault, FaultKind, KlaviyoMockThread
from tests.support.calls import forward, integration, make_click, new_key, register, wait_for
from tests.support.forwarder import REPO, ForwarderProcess
from tests.support.postgres import PostgresServer


def move_store(fwd: ForwarderProcess, url_file: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in fwd.env.items() if not k.startswith("FORWARDER_DATABASE_URL")}
    env["FORWARDER_DATABASE_URL_FILE"] = str(url_file)
    return subprocess.run(
        [sys.executable, "-m", "server", "move-store"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_queued_and_failed_events_move_to_postgres_and_are_delivered_after(
    forwarder_factory: Any,
    klaviyo_mock_thread: KlaviyoMockThread,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    mock = klaviyo_mock_thread
    key, ws = new_key(), "moving-ws"
    embedded: ForwarderProcess = forwarder_factory(klaviyo_url=mock.base_url, name="embedded")
    # One event fails for good (Klaviyo answers 400) before the move...
    mock.add_key(key, "acct-move")
    register(embedded, ws, key)
    mock.inject(Fault(FaultKind.STATUS, status=400, count=1, account="acct-move"))
    forward(embedded, [make_click(ws, "failed-1", "f@example.com")])
    wait_for(lambda: integration(embedded, ws).delivery.failed_count == 1, what="a failed event")
    # ...and more wait in the outbox: Klaviyo "revoked" the key, so they are held.
    mock.remove_key(key)
    clicks = [make_click(ws, f"queued-{i}", f"q{i}@example.com") for i in range(30)]
    forward(embedded, clicks)
    wait_for(
        lambda: integration(embedded, ws).state == pb.INTEGRATION_STATE_KEY_REJECTED,
        what="the key to be rejected",
    )
    assert integration(embedded, ws).delivery.queued_count == 30
    embedded.stop()

    url = postgres_server.create_database()
    url_file = tmp_path / "database-url"
    url_file.write_text(url + "\n")
    os.chmod(url_file, 0o600)
    moved = move_store(embedded, url_file)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    counts = {
        line.split()[0]: int(line.split()[1].replace(",", ""))
        for line in moved.stdout.splitlines()[1:]
    }
    assert counts == {
        "integrations": 1,
        "outbox": 31,
        "clicks": 31,
        "conversions": 0,
        "audit_events": 1,  # the registration
    }
    # A second move into the now non-empty database is refused and changes nothing.
    again = move_store(embedded, url_file)
    assert again.returncode == 1
    assert "not empty" in again.stdout

    cluster: ForwarderProcess = forwarder_factory(
        klaviyo_url=mock.base_url, database_url=url, name="cluster"
    )
    mock.add_key(key, "acct-move")
    register(cluster, ws, key)  # the owner fixes the key: the held events go out
    wait_for(lambda: len(mock.timeline("acct-move")) == 30, what="the moved events delivered")
    assert {e.unique_id for e in mock.timeline("acct-move")} == {c.click_id for c in clicks}
    failed = (
        cluster.stub()
        .ListFailedEvents(pb.ListFailedEventsRequest(workspace_id=ws), metadata=cluster.admin())
        .failed_events
    )
    assert [f.source_id for f in failed] == ["failed-1"]
    cluster.stub().ReplayFailedEvents(
        pb.ReplayFailedEventsRequest(workspace_id=ws, event_ids=[failed[0].event_id]),
        metadata=cluster.admin(),
    )
    wait_for(lambda: len(mock.timeline("acct-move")) == 31, what="the replayed event")
    # Resending a click taken before the move is a duplicate: the click index moved too.
    assert forward(cluster, [clicks[0]]) == [pb.CLICK_DISPOSITION_DUPLICATE]


def test_move_store_needs_a_database_url(forwarder_factory: Any) -> None:
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_DELIVERY": "off"})
    fwd.stop()
    env = {k: v for k, v in fwd.env.items() if not k.startswith("FORWARDER_DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "server", "move-store"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout.strip() == (
        "FORWARDER_DATABASE_URL (or FORWARDER_DATABASE_URL_FILE) is required"
    )
