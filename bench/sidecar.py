"""Edge sidecar throughput benchmark (figures, not a timed test).

Prints, from one run on this machine:

1. the no-op gRPC ceiling: a grpc.aio client streaming pre-serialized batches of 500 clicks
   (window 8) to a grpc.aio StreamClicks servicer in another process that acks immediately;
2. sustained clicks/s from HTTP through the spool (fsync on) to the receiving server;
3. sustained clicks/s from a JSON-lines log file through the spool to the receiving server;
4. the sidecar process's peak RSS (VmHWM) in each run;
5. the sidecar's CPU time per click in each run (user + system, from /proc) and the clicks/s
   one core gives at that cost: the figure other load on a shared machine moves least.

The receiving server is the real forwarder (``python -m server`` with SQLite, a dev OpenBao
and an integration registered; delivery off, so that its figure is intake alone) when
``tests/support/forwarder.py`` and the ``bao`` binary are available, else the no-op server.
``--receiver`` forces one. ``--profile DIR`` samples the sidecar with py-spy during each run
(raw collapsed stacks in DIR, and the top functions by own and by total time printed).
Usage: ``python bench/sidecar.py [--seconds 10] [--log-lines N] [--connections 4]
[--clicks-per-request 200] [--profile DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

import grpc  # noqa: E402 - after the path set-up above.
import grpc.aio  # noqa: E402
from elido.forwarder.v1 import forwarder_pb2  # noqa: E402

from bench._common import Profiler  # noqa: E402
from ingest_sidecar import ExtractConfig, Extractor  # noqa: E402
from ingest_sidecar._stream import METHOD, encode_request  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "protos")])}


# -- the no-op receiver ---------------------------------------------------------------------


async def _serve_noop(port_file: Path) -> None:
    async def stream_clicks(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for request in requests:
            yield forwarder_pb2.StreamClicksResponse(batch_id=request.batch_id)

    handler = grpc.method_handlers_generic_handler(
        "elido.forwarder.v1.ForwarderService",
        {
            "StreamClicks": grpc.stream_stream_rpc_method_handler(
                stream_clicks,
                request_deserializer=forwarder_pb2.StreamClicksRequest.FromString,
                response_serializer=forwarder_pb2.StreamClicksResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(port_file.write_text, str(port))
    await server.wait_for_termination()


def start_noop(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "noop.port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-noop", str(port_file)], env=ENV)
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


def sample_click_bytes(workspace_id: str, n: int, run: str = "r") -> list[bytes]:
    extractor = Extractor(ExtractConfig())
    return [
        extractor.extract(record(i, workspace_id, run)).click.SerializeToString() for i in range(n)
    ]


def record(i: int, workspace_id: str, run: str = "r") -> dict[str, Any]:
    return {
        "click_id": f"{run}-{i}",
        "workspace_id": workspace_id,
        "link_id": "lnk-42",
        "short_url": "https://eli.do/Ab3",
        "destination_url": (
            "https://shop.example/sale/item?utm_source=klaviyo&utm_medium=email"
            f"&utm_campaign=bf&email=user{i % 5000}%40example.com"
        ),
        "click_time": time.time() - 1,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        "referrer": "https://mail.example/",
    }


async def grpc_ceiling(target: str, seconds: float, token: str) -> float:
    """Clicks/s of a no-op client: pre-serialized batches of 500, window 8.

    Every batch carries new click ids (a real receiver answers a click id it has seen as a
    duplicate, by another path): one template, its fixed-width id prefix replaced per batch.
    """
    # The clicks field alone: a batch id of 0 is not written.
    clicks = encode_request(0, sample_click_bytes("ws-bench", 500, run="p0000000"))

    def request(n: int) -> bytes:
        return encode_request(n, []) + clicks.replace(b"p0000000-", b"p%07d-" % n)

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=forwarder_pb2.StreamClicksResponse.FromString,
        )(None, metadata=(("authorization", f"Bearer {token}"),))
        window = asyncio.Semaphore(8)
        acked = 0
        stop_at = time.monotonic() + seconds

        async def receive() -> None:
            nonlocal acked
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                acked += 500
                window.release()

        receiver = asyncio.create_task(receive())
        start = time.monotonic()
        sent = 0
        while time.monotonic() < stop_at:
            await window.acquire()
            sent += 1
            await call.write(request(sent))
        await call.done_writing()
        await receiver
        return acked / (time.monotonic() - start)


# -- the real forwarder -----------------------------------------------------------------------


def start_forwarder(stack: ExitStack, tmp: Path) -> tuple[str, str, str]:
    """(target, ingest token, workspace id) of a real forwarder with an integration."""
    from tests.support.forwarder import ForwarderProcess
    from tests.support.openbao import OpenBaoDevServer, VaultFixture

    bao = OpenBaoDevServer()
    bao.start()
    stack.callback(bao.stop)
    vault = VaultFixture(bao)
    # Delivery off, as in bench/ingest.py: with Klaviyo unreachable it would still try every
    # new event once, and that work on the same cores is not the sidecar's.
    fwd = ForwarderProcess(
        tmp / "forwarder", vault.addr, vault.forwarder_token, env={"FORWARDER_DELIVERY": "off"}
    )
    fwd.start()
    stack.callback(fwd.kill)
    workspace = "ws-bench"
    fwd.stub().RegisterIntegration(
        forwarder_pb2.RegisterIntegrationRequest(
            workspace_id=workspace, private_key="pk_" + secrets.token_hex(17)
        ),
        metadata=tuple(fwd.admin()),
    )
    return fwd.target, fwd.ingest_token, workspace


# -- the sidecar ------------------------------------------------------------------------------


class Sidecar:
    def __init__(self, tmp: Path, target: str, token: str, tail: Path | None = None) -> None:
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "token").write_text(token)
        tail_table = ""
        if tail is not None:
            tail_table = f'[tail]\npath = "{tail}"\npoll_interval_s = 0.05\n'
        (tmp / "sidecar.toml").write_text(f"""
[http]
port = 0
[spool]
directory = "{tmp / "spool"}"
[stream]
target = "{target}"
token_file = "{tmp / "token"}"
batch_max_clicks = 500
window_batches = 8
[log]
level = "warning"
{tail_table}""")
        self.log = tmp / "sidecar.log"
        with self.log.open("wb") as err:
            # Level warning hides http_listening: find the port in /proc instead.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ingest_sidecar", "--config", str(tmp / "sidecar.toml")],
                env={**ENV, "ELIDO_SIDECAR_LOG_LEVEL": "info"},
                stderr=err,
                cwd=ROOT,
            )
        self.port = 0

    async def ready(self) -> None:
        while not self.port:
            for line in self.log.read_text(errors="replace").splitlines():
                if '"http_listening"' in line:
                    self.port = int(json.loads(line)["port"])
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            await asyncio.sleep(0.05)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the sidecar has used: a figure that other load on a
        shared machine moves much less than clicks/s."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    async def acked(self) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = (await reader.read()).decode()
        writer.close()
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("elido_sidecar_acked_clicks_total{")
            )
        )

    async def wait_acked(self, count: int, limit_s: float = 300.0) -> None:
        deadline = time.monotonic() + limit_s
        while await self.acked() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {await self.acked()} of {count} acked")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


async def post_loop(
    port: int, workspace: str, run: str, seconds: float, batch: int, connections: int
) -> int:
    """Keep-alive posters; returns clicks accepted (202)."""
    accepted = 0
    stop_at = time.monotonic() + seconds
    counter = 0
    # Lines built once with a placeholder for the click id: the client's own JSON encoding
    # must not take the CPU the sidecar is measured on.
    template = [
        json.dumps(record(i, workspace, "@@")).encode().replace(b"@@-%d" % i, b"@ID@")
        for i in range(batch)
    ]

    async def one() -> None:
        nonlocal accepted, counter
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            start, counter = counter, counter + batch
            body = b"\n".join(
                line.replace(b"@ID@", b"%s-%d" % (run.encode(), start + i))
                for i, line in enumerate(template)
            )
            writer.write(
                b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 202"):
                accepted += batch
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return accepted


async def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)
        noop, noop_target = start_noop(tmp)
        stack.callback(noop.kill)
        ceiling = await grpc_ceiling(noop_target, args.seconds, "x")
        use_forwarder = args.receiver == "forwarder" or (
            args.receiver == "auto"
            and (ROOT / "tests/support/forwarder.py").exists()
            and shutil.which("bao", path=str(Path(sys.executable).parent)) is not None
        )
        if use_forwarder:
            target, token, workspace = start_forwarder(stack, tmp)
            receiver = "real forwarder (python -m server, SQLite, dev OpenBao)"
            server_ceiling = await grpc_ceiling(target, args.seconds, token)
        else:
            target, token, workspace = noop_target, "x", "ws-bench"
            receiver = "no-op grpc.aio StreamClicks server"
            server_ceiling = ceiling

        # HTTP -> spool -> server.
        profiles: dict[str, str] = {}
        sidecar = Sidecar(tmp / "http", target, token)
        stack.callback(sidecar.proc.kill)
        await sidecar.ready()
        profiler = Profiler(sidecar.proc.pid, args.profile / "http.txt") if args.profile else None
        start = time.monotonic()
        cpu_start = sidecar.cpu_s()
        accepted = await post_loop(
            sidecar.port, workspace, "h", args.seconds, args.clicks_per_request, args.connections
        )
        http_elapsed = time.monotonic() - start
        await sidecar.wait_acked(accepted)
        http_e2e_elapsed = time.monotonic() - start
        http_cpu_us = (sidecar.cpu_s() - cpu_start) / max(accepted, 1) * 1e6
        if profiler:
            profiles["HTTP in"] = profiler.stop()
        http_rss = sidecar.peak_rss_mb()
        sidecar.stop()

        # Log file -> spool -> server.
        log = tmp / "access.log"
        with log.open("w") as f:
            for i in range(args.log_lines):
                f.write(json.dumps(record(i, workspace, "l")) + "\n")
        sidecar = Sidecar(tmp / "log", target, token, tail=log)
        stack.callback(sidecar.proc.kill)
        await sidecar.ready()
        profiler = Profiler(sidecar.proc.pid, args.profile / "log.txt") if args.profile else None
        start = time.monotonic()
        cpu_start = sidecar.cpu_s()
        await sidecar.wait_acked(args.log_lines)
        log_elapsed = time.monotonic() - start
        log_cpu_us = (sidecar.cpu_s() - cpu_start) / args.log_lines * 1e6
        if profiler:
            profiles["log in"] = profiler.stop()
        log_rss = sidecar.peak_rss_mb()
        sidecar.stop()

    print(
        f"receiving server: {receiver}; HTTP posters: {args.connections} keep-alive "
        f"connections, {args.clicks_per_request} clicks a request"
    )
    print(
        f"no-op grpc.aio StreamClicks ceiling (batches of 500, window 8): {ceiling:,.0f} clicks/s"
    )
    if use_forwarder:
        print(f"same client against the receiving server: {server_ceiling:,.0f} clicks/s")
    print(
        f"HTTP in: {accepted / http_elapsed:,.0f} clicks/s accepted (202, fsynced); "
        f"{accepted / http_e2e_elapsed:,.0f} clicks/s through to server acks "
        f"({accepted:,} clicks, {accepted / http_e2e_elapsed / ceiling:.1%} of ceiling); "
        f"peak RSS {http_rss:.1f} MB"
    )
    print(
        f"log in:  {args.log_lines / log_elapsed:,.0f} clicks/s through to server acks "
        f"({args.log_lines:,} lines, {args.log_lines / log_elapsed / ceiling:.1%} of "
        f"ceiling); peak RSS {log_rss:.1f} MB"
    )
    print(
        f"sidecar CPU per click: HTTP in {http_cpu_us:.1f} µs ({1e6 / http_cpu_us:,.0f} clicks/s "
        f"per core), log in {log_cpu_us:.1f} µs ({1e6 / log_cpu_us:,.0f} clicks/s per core)"
    )
    for name, text in profiles.items():
        print(f"py-spy profile of the sidecar, {name}:\n{text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--log-lines", type=int, default=200_000)
    # Each request waits for its group commit: with few connections the fsync latency, not
    # the sidecar, bounds the HTTP figure.
    parser.add_argument(
        "--connections", type=int, default=4, help="HTTP posters (keep-alive connections)"
    )
    parser.add_argument(
        "--clicks-per-request", type=int, default=200, help="clicks in each HTTP POST (NDJSON)"
    )
    parser.add_argument("--receiver", choices=("auto", "noop", "forwarder"), default="auto")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of the sidecar here")
    parser.add_argument("--serve-noop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.serve_noop:
        asyncio.run(_serve_noop(Path(args.serve_noop)))
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
