"""Helpers shared by the benchmarks: OpenBao, memory sampling, percentiles, a Klaviyo mock
process.

Generic on purpose (no benchmark's own logic here). Import after putting the project root and
``protos/`` on ``sys.path`` (``bench/*.py`` do that first), as ``from bench._common import ...``.

The Klaviyo mock runs in its own process (``python -m bench._common serve-klaviyo-mock``) so that
it does not compete with the measuring process for the GIL. It keeps no events in memory (a
backlog of millions would swamp it); instead it appends one line per accepted request to an
*accept log* the driver reads: ``<received_at> <endpoint> <account> <events> [<unique_id>]``
(the unique id only for single Create Event requests, where per-event latency matters).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _status_kb(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MiB; 0 if it is gone."""
    return _status_kb(pid, "VmHWM") / 1024.0


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. the forwarder's intake worker processes)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().split()[3]) == pid:
                    children.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return children


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid`` and its live children (e.g. intake workers)."""
    return cpu_s(pid) + sum(cpu_s(child) for child in child_pids(pid))


def tree_peak_rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM of ``pid``, sum of its children's VmHWM), in MiB."""
    return peak_rss_mb(pid), sum(peak_rss_mb(child) for child in child_pids(pid))


def rss_mb(pid: int) -> float:
    """The process's current resident set size (VmRSS), in MiB; 0 if it is gone."""
    return _status_kb(pid, "VmRSS") / 1024.0


class RssSampler:
    """Samples a pid's VmRSS in a thread; ``peak_mb`` is the highest sample seen.

    VmHWM (``peak_rss_mb``) is the authoritative peak; sampling tells *when* it happened.
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            self._stop.wait(self.interval_s)


# -- OpenBao ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VaultAccess:
    """Where a started OpenBao listens and a least-privilege forwarder token for it."""

    addr: str
    token: str

    def __repr__(self) -> str:
        return f"VaultAccess(addr={self.addr!r}, token=<redacted>)"


def start_openbao(stack: contextlib.ExitStack) -> VaultAccess:
    """Starts a ``bao server -dev`` (stopped when ``stack`` closes)."""
    from server.devstack._openbao import OpenBaoDevServer

    server = OpenBaoDevServer()
    server.start()
    stack.callback(server.stop)
    return VaultAccess(server.addr, server.mint_token())


# -- the Klaviyo mock in its own process ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """One request the mock accepted (answered 202), from the accept log."""

    received_at: float  # time.time() in the mock process when the request arrived
    endpoint: str  # "events" or "bulk"
    account: str
    events: int
    unique_id: str | None


class KlaviyoMockProcess:
    """``python -m bench._common serve-klaviyo-mock`` driven through the mock's admin API."""

    def __init__(
        self,
        workdir: Path,
        events_limit: tuple[int, int] = (350, 3500),
        bulk_limit: tuple[int, int] = (10, 150),
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.accept_log = workdir / "accepted.log"
        self.events_limit = events_limit
        self.bulk_limit = bulk_limit
        self.base_url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._http: Any = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 20.0) -> None:
        import httpx

        port_file = self.workdir / "port"
        stderr = (self.workdir / "mock.log").open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench._common",
                "serve-klaviyo-mock",
                "--port-file",
                str(port_file),
                "--accept-log",
                str(self.accept_log),
                "--events-limit",
                "{}/{}".format(*self.events_limit),
                "--bulk-limit",
                "{}/{}".format(*self.bulk_limit),
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()
        deadline = time.monotonic() + timeout_s
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the Klaviyo mock did not start; see {self.workdir / 'mock.log'}"
                )
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{int(port_file.read_text())}"
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _post(self, path: str, body: dict[str, Any]) -> None:
        self._http.post(path, json=body).raise_for_status()

    def add_key(self, key: str, account: str) -> None:
        self._post("/__mock__/keys", {"key": key, "account": account})

    def remove_key(self, key: str) -> None:
        self._http.request("DELETE", "/__mock__/keys", json={"key": key}).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self._http.get("/__mock__/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def timeline_count(self, account: str) -> int:
        return int(self.stats()["accounts"].get(account, {}).get("timeline", 0))

    def accepted(self, account: str | None = None) -> list[Accepted]:
        """Accepted requests so far (of ``account``, or all), in arrival order."""
        if not self.accept_log.exists():
            return []
        out = []
        with self.accept_log.open() as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4 or (account is not None and parts[2] != account):
                    continue  # the last line may still be half written
                out.append(
                    Accepted(
                        float(parts[0]),
                        parts[1],
                        parts[2],
                        int(parts[3]),
                        parts[4] if len(parts) > 4 else None,
                    )
                )
        return out


def _serve_klaviyo_mock(argv: list[str]) -> None:
    import structlog

    from tests.klaviyo_mock._config import AccountLimits, MockConfig, WindowLimit
    from tests.klaviyo_mock._server import KlaviyoMock
    from tests.klaviyo_mock._validation import EventIn

    parser = argparse.ArgumentParser(prog="python -m bench._common serve-klaviyo-mock")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--accept-log", type=Path, required=True)
    parser.add_argument("--events-limit", default="350/3500")
    parser.add_argument("--bulk-limit", default="10/150")
    args = parser.parse_args(argv)

    def window(text: str) -> WindowLimit:
        burst, steady = text.split("/")
        return WindowLimit(int(burst), int(steady))

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    # Line-buffered: the driver reads the log while the mock runs.
    log: IO[str] = args.accept_log.open("a", buffering=1)

    class BenchMock(KlaviyoMock):
        # _record() is where the mock accepts a request's events (just before its 202); hooking
        # it gives the arrival time and event count per accepted request without keeping the
        # events themselves.
        def _record(self, account: str, endpoint: str, events: list[EventIn], record: Any) -> None:
            super()._record(account, endpoint, events, record)
            unique = f" {events[0].unique_id}" if endpoint == "events" and events else ""
            log.write(f"{record.received_at:.6f} {endpoint} {account} {len(events)}{unique}\n")

    config = MockConfig(
        port=0,
        limits=AccountLimits(events=window(args.events_limit), bulk=window(args.bulk_limit)),
        max_recorded_requests=16,
        record_events=False,
    )

    async def serve() -> None:
        mock = BenchMock(config)
        await mock.start()
        args.port_file.write_text(str(mock.port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await mock.stop()

    try:
        asyncio.run(serve())
    finally:
        log.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-klaviyo-mock"]:
        _serve_klaviyo_mock(sys.argv[2:])
    else:
        sys.exit("usage: python -m bench._common serve-klaviyo-mock --port-file F --accept-log L")


# -- profiles ---------------------------------------------------------------------------------


class Profiler:
    """py-spy sampling one process into a raw collapsed-stacks file."""

    def __init__(self, pid: int, out: Path, subprocesses: bool = False) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                *(["--subprocesses"] if subprocesses else []),
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        return summarize(self.out)


# Frames every sample passes through (the interpreter's start, the event loop): left out of
# the inclusive ranking, where they would only say 100 %.
_PLUMBING = ("(<frozen runpy>)", "(runners.py)", "(base_events.py)", "(events.py)", "(__main__.py)")


def summarize(path: Path, top: int = 12) -> str:
    """The top functions of a py-spy raw profile, by own samples and by inclusive samples."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            for f in stack.split(";")
        ]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            if not frame.endswith(_PLUMBING):
                total[frame] = total.get(frame, 0) + count
    lines = [f"  {samples} samples; top by own time:"]
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {n / samples:6.1%}  {name}")
    lines.append("  top by total time (incl. callees):")
    for name, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {n / samples:6.1%}  {name}")
    return "\n".join(lines)
