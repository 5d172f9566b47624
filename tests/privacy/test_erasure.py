"""Erasure of a person and replay by selection, end to end: the real forwarder (both store
backends), real OpenBao, real gRPC, the Klaviyo mock and the ``elido-fwd`` CLI as a process.

The erased identifiers must be gone afterwards from the store (SQLite: not a byte of them in
the database file, its WAL or its shared-memory file; PostgreSQL: no row), and must never
have appeared in the forwarder's logs, metrics or any answer.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.client.cli_support import CONSOLE_SCRIPT, process_env
from tests.klaviyo_mock import Fault, FaultKind, KlaviyoMockThread
from tests.support.calls import forward, integration, make_click, new_key, register, wait_for
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.openbao import new_workspace_id

ON_EVERY_BACKEND = pytest.mark.parametrize("store_backend", BACKENDS)
SECRET_EMAIL = "Grace.Erasable-51c9@Example.org"
SECRET_PHONE = "+14155550199"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(fwd: ForwarderProcess, tmp_path: Path, *argv: str, stdin: str = "") -> Any:
    token_file = tmp_path / "admin-token"
    token_file.write_text(fwd.admin_token)
    env = process_env(
        {"ELIDO_FORWARDER_TARGET": fwd.target, "ELIDO_FORWARDER_TOKEN_FILE": str(token_file)}
    )
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _store_bytes(fwd: ForwarderProcess) -> bytes:
    return b"".join(
        Path(f"{fwd.db_path}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm")
        if Path(f"{fwd.db_path}{suffix}").exists()
    )


@ON_EVERY_BACKEND
def test_erasure_of_queued_delivered_and_failed_clicks_then_a_conversion(
    forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread, tmp_path: Path
) -> None:
    metrics_port = _free_port()
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url,
        env={"FORWARDER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
    )
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-erase")
    register(fwd, ws, key)

    # Failed: Klaviyo refuses the first event.
    klaviyo_mock_thread.inject(Fault(FaultKind.STATUS, status=400, count=1, account="acct-erase"))
    forward(fwd, [make_click(ws, "failed-1", email=SECRET_EMAIL)])
    wait_for(lambda: integration(fwd, ws).delivery.failed_count == 1, what="a failed event")
    # Delivered.
    forward(fwd, [make_click(ws, "delivered-1", email=SECRET_EMAIL)])
    wait_for(lambda: len(klaviyo_mock_thread.timeline("acct-erase")) == 1, what="a delivery")
    # Queued: Klaviyo answers 503 for a while, so these wait for a retry.
    klaviyo_mock_thread.inject(
        Fault(FaultKind.STATUS, status=503, duration_s=600, account="acct-erase")
    )
    by_phone = make_click(ws, "queued-2", age_s=2.0)
    by_phone.identifiers.phone_number = "+1 (415) 555-0199"
    forward(
        fwd,
        [
            make_click(ws, "queued-1", email=SECRET_EMAIL.lower()),
            by_phone,
            make_click(ws, "other-1", email="someone.else@example.org"),
        ],
    )
    assert integration(fwd, ws).delivery.queued_count == 3
    if fwd.database.sqlite_path is not None:
        assert SECRET_EMAIL.lower().encode() in _store_bytes(fwd).lower()  # the test can see it

    # The identifiers go through stdin, never argv; the email in another ASCII case, the
    # phone number in another notation than the one sent.
    result = _cli(
        fwd,
        tmp_path,
        "--json",
        "erase",
        "--workspace",
        ws,
        "--identifiers-file",
        "-",
        stdin=f"# request 2026-117\nemail:{SECRET_EMAIL.upper()}\nphone:+1 415-555-0199\n",
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    # Index: failed-1, delivered-1, queued-1, queued-2; outbox: queued-1, queued-2, failed-1.
    assert counts == {
        "erased_click_count": "4",
        "erased_queued_count": "2",
        "erased_failed_count": "1",
    }
    status = integration(fwd, ws).delivery
    assert (status.queued_count, status.failed_count) == (1, 0)

    # A later conversion citing an erased click has no profile any more.
    conversion = pb.Conversion(workspace_id=ws, conversion_id="conv-1", click_id="delivered-1")
    answer = fwd.stub().ForwardConversion(
        pb.ForwardConversionRequest(conversion=conversion), metadata=fwd.ingest()
    )
    assert answer.disposition == pb.CONVERSION_DISPOSITION_UNATTRIBUTED

    # Nothing of the person is left in the store...
    if fwd.database.sqlite_path is not None:
        stored = _store_bytes(fwd).lower()
        assert SECRET_EMAIL.lower().encode() not in stored
        assert SECRET_PHONE.encode() not in stored
        assert b"someone.else@example.org" in stored  # the other person's click is kept
    for table in ("clicks", "outbox"):
        assert (
            fwd.database.value(
                f"SELECT count(*) FROM {table} WHERE lower(email) = ? OR phone_number = ?",
                SECRET_EMAIL.lower(),
                SECRET_PHONE,
            )
            == 0
        )
    # ...and it never showed in the logs, the metrics or any answer.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    for text in (fwd.logs(), metrics, result.stdout, result.stderr):
        assert SECRET_EMAIL.lower() not in text.lower()
        assert "555-0199" not in text
        assert "5550199" not in text
    assert "personal data erased" in fwd.logs()


@ON_EVERY_BACKEND
def test_erasure_refuses_bad_input_without_echoing_it(
    forwarder_factory: Any, tmp_path: Path
) -> None:
    fwd: ForwarderProcess = forwarder_factory()
    stub = fwd.stub()
    bad = pb.ErasePersonalDataRequest(
        workspace_id="ws-1",
        emails=["not-an-email-7731"],
        phone_numbers=["4155550142"],  # no country code
        kxs=["nope-8812"],
        external_ids=["crm\x00-9924"],
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ErasePersonalData(bad, metadata=fwd.admin())
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = error.details() + repr(error.trailing_metadata())
    for value in ("7731", "4155550142", "8812", "9924"):
        assert value not in text
    assert "emails[0]" in error.details() or "emails[0]" in text
    # No identifier at all; a workspace and all_workspaces at once.
    for request in (
        pb.ErasePersonalDataRequest(workspace_id="ws-1"),
        pb.ErasePersonalDataRequest(
            workspace_id="ws-1", all_workspaces=True, emails=["a@example.com"]
        ),
        pb.ErasePersonalDataRequest(emails=["a@example.com"]),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ErasePersonalData(request, metadata=fwd.admin())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    # Admin only.
    with pytest.raises(grpc.RpcError) as caught:
        stub.ErasePersonalData(
            pb.ErasePersonalDataRequest(workspace_id="ws-1", emails=["a@example.com"]),
            metadata=fwd.ingest(),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    # The CLI refuses identifiers without a type, naming the line but not the value.
    result = _cli(
        fwd,
        tmp_path,
        "erase",
        "--workspace",
        "ws-1",
        "--identifiers-file",
        "-",
        stdin="ada-3317@example.com\n",
    )
    assert result.returncode == 4
    assert "line 1" in result.stderr
    assert "3317" not in result.stderr
    for value in ("7731", "4155550142", "8812", "9924", "3317"):
        assert value not in fwd.logs()
