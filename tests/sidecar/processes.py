"""The sidecar as a real subprocess, and a burst of HTTP posters that records what got 202."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.sidecar.helpers import http_request

ROOT = Path(__file__).resolve().parents[2]


class SidecarProcess:
    """``python -m ingest_sidecar --config ...`` with a spool under ``tmp``."""

    def __init__(
        self, tmp: Path, target: str, name: str, token: str = "ingest-token", extra_toml: str = ""
    ) -> None:
        self.tmp = tmp
        self.log = tmp / f"{name}.log"
        config = tmp / "sidecar.toml"
        config.write_text(f"""
[http]
host = "127.0.0.1"
port = 0
[spool]
directory = "{tmp / "spool"}"
segment_bytes = 65536
max_bytes = 16777216
[stream]
target = "{target}"
token_file = "{tmp / "token"}"
batch_max_clicks = 50
batch_linger_ms = 5
backoff_initial_s = 0.05
backoff_max_s = 0.5
{extra_toml}
""")
        (tmp / "token").write_text(token + "\n")
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}"}
        with self.log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest_sidecar", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.port = 0

    async def wait_listening(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if '"http_listening"' in line:
                    self.port = int(json.loads(line)["port"])
                    return self.port
            assert self.proc.poll() is None, self.log.read_text()
            await asyncio.sleep(0.05)
        raise AssertionError("sidecar did not start")

    async def wait_caught_up(self, within_s: float = 30.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            _, _, payload = await http_request(self.port, "GET", "/healthz")
            if json.loads(payload)["unacked_clicks"] == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("sidecar did not catch up")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


class Burst:
    """Posters sending batches of 20 clicks; ``accepted`` holds the ids answered 202."""

    def __init__(
        self,
        make_record: Callable[[int], dict[str, Any]],
        posters: int = 8,
        id_of: Callable[[dict[str, Any]], str] = lambda record: str(record["click_id"]),
    ) -> None:
        self.make_record = make_record
        self.id_of = id_of
        self.posters = posters
        self.posted: set[str] = set()
        self.accepted: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._next = 0

    def start(self, port: int) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._post(port)) for _ in range(self.posters)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _post(self, port: int) -> None:
        while not self._stop.is_set():
            start, self._next = self._next, self._next + 20
            records = [self.make_record(i) for i in range(start, start + 20)]
            self.posted.update(self.id_of(r) for r in records)
            body = "\n".join(json.dumps(r) for r in records).encode()
            try:
                status, _, _ = await http_request(port, "POST", "/v1/clicks", body)
            except (ConnectionError, OSError, IndexError, ValueError) as exc:
                self.errors.append(repr(exc))
                return  # killed mid-request: not accepted
            self.statuses[status] += 1
            if status == 202:
                self.accepted.update(self.id_of(r) for r in records)
