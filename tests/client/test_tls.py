"""TLS and mutual TLS against a real TLS gRPC server with throwaway certificates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc

from client import AsyncForwarderClient, ClientConfig, RetryPolicy, TlsConfig, Unavailable
from tests.client.fake_server import ADMIN_TOKEN, FakeForwarder


@pytest.fixture
async def mtls_target(pki: Path) -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_ForwarderServiceServicer_to_server(FakeForwarder(), server)
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield f"localhost:{port}"
    await server.stop(None)


async def test_mutual_tls_with_client_certificate(pki: Path, mtls_target: str) -> None:
    tls = TlsConfig(
        ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key"
    )
    config = ClientConfig(target=mtls_target, token=ADMIN_TOKEN, tls=tls)
    async with AsyncForwarderClient(config) as client:
        response = await client.list_integrations()
    assert list(response.integrations) == []


async def test_server_refuses_a_client_without_certificate(pki: Path, mtls_target: str) -> None:
    config = ClientConfig(
        target=mtls_target,
        token=ADMIN_TOKEN,
        tls=TlsConfig(ca_file=pki / "ca.pem"),
        retry=RetryPolicy.disabled(),
        default_timeout_s=3,
    )
    async with AsyncForwarderClient(config) as client:
        with pytest.raises(Unavailable):
            await client.list_integrations()
