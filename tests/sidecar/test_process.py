"""Real processes: the sidecar as a subprocess, SIGKILLed in the middle of a burst."""

from pathlib import Path

import pytest

from tests.sidecar.fakes import FakeServer
from tests.sidecar.helpers import click_record, wait_for
from tests.sidecar.processes import Burst, SidecarProcess


@pytest.mark.slow
async def test_sigkill_mid_burst_loses_nothing(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    sidecar = SidecarProcess(tmp_path, server.target, "first")
    burst = Burst(click_record)
    burst.start(await sidecar.wait_listening())
    await wait_for(lambda: len(burst.accepted) >= 3000, within_s=30)
    # The receiver also goes away abruptly mid-stream and comes back.
    await server.stop(grace=None)
    await server.start()
    await wait_for(lambda: len(burst.accepted) >= 6000, within_s=30)
    # Acks stop coming, so that the kill is sure to find accepted, unacknowledged clicks.
    server.servicer.hold_acks.clear()
    floor = len(burst.accepted) + 1000
    await wait_for(lambda: len(burst.accepted) >= floor, within_s=30)
    sidecar.kill()
    await burst.stop()
    taken_before_restart = len(server.received.clicks)
    server.servicer.hold_acks.set()

    sidecar = SidecarProcess(tmp_path, server.target, "second")
    await sidecar.wait_listening()
    try:
        await wait_for(lambda: burst.accepted <= set(server.received.clicks), within_s=30)
        await sidecar.wait_caught_up()
    finally:
        assert sidecar.terminate() == 0
        await server.stop()
    # Every accepted click committed once (re-sends of the batches unacked at the kill were
    # answered DUPLICATE), and nothing that was never posted.
    assert taken_before_restart < len(burst.accepted), "the kill came too late to test anything"
    assert burst.accepted <= set(server.received.clicks) <= burst.posted
    for name in ("first.log", "second.log"):
        assert "ingest-token" not in (tmp_path / name).read_text()
