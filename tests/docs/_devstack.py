"""``make run`` for the docs tests: the real ``python -m server.devstack`` on free ports.

``make run`` itself binds fixed ports (8200, 50051), so the test runs the same command the
Makefile runs, with ``DEVSTACK_VAULT_PORT``/``DEVSTACK_LISTEN`` on free ports and
``FORWARDER_DATA_DIR`` in a temporary directory, and stops it with SIGINT as Ctrl-C would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.devstack._openbao import free_port
from tests.docs._terminal import REPO


class DevStack:
    """A running devstack (OpenBao + forwarder) and what it printed."""

    def __init__(self, data_dir: Path, klaviyo_base_url: str) -> None:
        self.data_dir = data_dir
        self.vault = f"127.0.0.1:{free_port()}"
        self.target = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self._output = data_dir.parent / "devstack.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "FORWARDER_"))}
        env.update(
            {
                "FORWARDER_DATA_DIR": str(data_dir),
                "DEVSTACK_VAULT_PORT": self.vault.rsplit(":", 1)[1],
                "DEVSTACK_LISTEN": self.target,
                # What the README has the reader pass to `make run`, and the metrics endpoint the
                # operator guide shows.
                "KLAVIYO_BASE_URL": klaviyo_base_url,
                "FORWARDER_METRICS_LISTEN": self.metrics,
            }
        )
        with self._output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.devstack"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._channel = grpc.insecure_channel(self.target)

    def output(self) -> str:
        return self._output.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        health = health_pb2_grpc.HealthStub(self._channel)
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"devstack exited early:\n{self.output()}")
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"devstack did not serve within {timeout_s}s:\n{self.output()}"
                )
            time.sleep(0.1)

    def token(self, role: str) -> str:
        saved = json.loads((self.data_dir / "dev-tokens.json").read_text())
        return next(str(t["token"]) for t in saved["tokens"] if t["role"] == role)

    def stub(self) -> pb_grpc.ForwarderServiceStub:
        return pb_grpc.ForwarderServiceStub(self._channel)

    def integration(self, workspace_id: str) -> pb.Integration:
        answer = self.stub().GetIntegration(
            pb.GetIntegrationRequest(workspace_id=workspace_id),
            timeout=5,
            metadata=(("authorization", f"Bearer {self.token('admin')}"),),
        )
        return answer.integration

    def ctrl_c(self, timeout_s: float = 40.0) -> int:
        """SIGINT, as Ctrl-C in the terminal of `make run`; returns the exit status."""
        self._channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def wait_until(condition: object, what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition()`` until it is true."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
