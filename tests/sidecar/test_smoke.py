from pathlib import Path

from ingest_sidecar import Sidecar
from tests.sidecar.fakes import FakeServer
from tests.sidecar.helpers import click_record, make_config, post_clicks, wait_for


async def test_http_to_stream(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    sidecar = Sidecar(make_config(tmp_path, server.target))
    await sidecar.start()
    try:
        status, body = await post_clicks(sidecar.http_port, [click_record(i) for i in range(50)])
        assert status == 202, body
        assert body["accepted"] == 50
        await wait_for(lambda: len(server.received.clicks) == 50)
        click = server.received.clicks["c-00000007"]
        assert click.identifiers.email == "user7@example.com"
        assert dict(click.utm_parameters) == {"utm_source": "klaviyo"}
        assert ("authorization", "Bearer t0ken-ingest") in server.received.metadata[0]
    finally:
        await sidecar.stop()
        await server.stop()
