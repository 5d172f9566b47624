"""Sidecar -> real forwarder -> Klaviyo mock, with both processes SIGKILLed mid-stream."""

import asyncio
import json
import secrets
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc

from tests.klaviyo_mock import KlaviyoMockThread
from tests.sidecar.helpers import click_record, http_request, wait_for
from tests.sidecar.processes import Burst, SidecarProcess
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(
    forwarder_factory: Any, mock: KlaviyoMockThread, account: str
) -> tuple[ForwarderProcess, str]:
    # A fixed port, so that the restarted forwarder is where the sidecar dials.
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=mock.base_url, env={"FORWARDER_LISTEN": f"127.0.0.1:{free_port()}"}
    )
    key, ws = "pk_" + secrets.token_hex(17), new_workspace_id()
    mock.add_key(key, account)
    fwd.stub().RegisterIntegration(
        pb.RegisterIntegrationRequest(workspace_id=ws, private_key=key),
        metadata=tuple(fwd.admin()),
    )
    return fwd, ws


def timeline_ids(mock: KlaviyoMockThread, account: str) -> list[str]:
    return [e.unique_id or "" for e in mock.timeline(account)]


async def test_clicks_reach_the_klaviyo_timeline(
    tmp_path: Path, forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread
) -> None:
    fwd, ws = setup(forwarder_factory, klaviyo_mock_thread, "acct-sidecar")
    now = time.time()
    sidecar = SidecarProcess(tmp_path, fwd.target, "sidecar", token=fwd.ingest_token)
    try:
        burst = Burst(
            lambda i: click_record(
                i,
                workspace_id=ws,
                click_time=now - 5,
                click_id=None,
                destination_url=(
                    f"https://shop.example/p?utm_source=klaviyo&utm_campaign=bf"
                    f"&elido_click_id=e2e-{i}&email=user{i}%2Btag%40example.com"
                ),
            ),
            id_of=lambda r: parse_qs(urlsplit(r["destination_url"]).query)["elido_click_id"][0],
        )
        burst.start(await sidecar.wait_listening())
        await wait_for(lambda: len(burst.accepted) >= 200, within_s=20)
        await burst.stop()
        await sidecar.wait_caught_up()
        await asyncio.to_thread(
            wait_for_sync,
            lambda: set(timeline_ids(klaviyo_mock_thread, "acct-sidecar")) >= burst.accepted,
        )
    finally:
        assert sidecar.terminate() == 0
    events = {e.unique_id: e for e in klaviyo_mock_thread.timeline("acct-sidecar")}
    event = events["e2e-7"]
    assert event.profile == {"email": "user7+tag@example.com"}
    assert event.properties["utm_campaign"] == "bf"
    assert event.properties["link_id"] == "lnk-7"
    assert fwd.ingest_token not in (tmp_path / "sidecar.log").read_text()


def wait_for_sync(condition: Any, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.mark.slow
async def test_sigkill_of_sidecar_and_forwarder_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread
) -> None:
    fwd, ws = setup(forwarder_factory, klaviyo_mock_thread, "acct-faults")
    now = time.time()
    burst = Burst(
        lambda i: click_record(
            i,
            workspace_id=ws,
            click_time=now - 5,
            destination_url=f"https://shop.example/p?email=u{i % 50}%40example.com",
        )
    )
    sidecar = SidecarProcess(tmp_path, fwd.target, "first", token=fwd.ingest_token)
    burst.start(await sidecar.wait_listening())
    await wait_for(lambda: len(burst.accepted) >= 1500, within_s=30)
    fwd.kill()
    await wait_for(lambda: len(burst.accepted) >= 2500, within_s=30)
    await asyncio.to_thread(fwd.start)
    await wait_for(lambda: len(burst.accepted) >= 4000, within_s=30)
    sidecar.kill()
    await burst.stop()

    sidecar = SidecarProcess(tmp_path, fwd.target, "second", token=fwd.ingest_token)
    await sidecar.wait_listening()
    try:
        await sidecar.wait_caught_up(within_s=60)
        await asyncio.to_thread(
            wait_for_sync,
            lambda: set(timeline_ids(klaviyo_mock_thread, "acct-faults")) >= burst.accepted,
        )
    finally:
        assert sidecar.terminate() == 0
    ids = timeline_ids(klaviyo_mock_thread, "acct-faults")
    assert len(ids) == len(set(ids))
    assert burst.accepted <= set(ids) <= burst.posted


async def test_sidecar_streams_over_mutual_tls(
    tmp_path: Path, forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread, pki: Path
) -> None:
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url,
        env={"FORWARDER_TLS_CERT": str(pki / "server.pem"),
             "FORWARDER_TLS_KEY": str(pki / "server.key"),
             "FORWARDER_TLS_CLIENT_CA": str(pki / "ca.pem")})  # fmt: skip
    key, ws = "pk_" + secrets.token_hex(17), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-mtls")
    with_cert = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(),
        (pki / "client.pem").read_bytes())  # fmt: skip
    with grpc.secure_channel(f"localhost:{fwd.port}", with_cert) as channel:
        pb_grpc.ForwarderServiceStub(channel).RegisterIntegration(
            pb.RegisterIntegrationRequest(workspace_id=ws, private_key=key),
            metadata=tuple(fwd.admin()), timeout=10)  # fmt: skip
    tls = (f'tls = true\nca_file = "{pki / "ca.pem"}"\ncert_file = "{pki / "client.pem"}"\n'
           f'key_file = "{pki / "client.key"}"\n')  # fmt: skip
    sidecar = SidecarProcess(tmp_path, f"localhost:{fwd.port}", "sidecar-tls",
                             token=fwd.ingest_token, extra_toml=tls)  # fmt: skip
    try:
        port = await sidecar.wait_listening()
        records = [click_record(i, workspace_id=ws, click_time=time.time() - 5) for i in range(20)]
        body = "\n".join(json.dumps(r) for r in records).encode()
        status, _, _ = await http_request(port, "POST", "/v1/clicks", body,
                                          {"Content-Type": "application/x-ndjson"})  # fmt: skip
        assert status == 202
        await sidecar.wait_caught_up()
        await asyncio.to_thread(
            wait_for_sync, lambda: len(timeline_ids(klaviyo_mock_thread, "acct-mtls")) == 20
        )
    finally:
        assert sidecar.terminate() == 0
