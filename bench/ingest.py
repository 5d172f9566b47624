"""Durable-ingest throughput of the forwarder beside a no-op grpc.aio server's ceiling.

Prints clicks/s through StreamClicks (batches of 100 and 500) and ForwardClick calls/s with
64 in flight, for a no-op server and for the real forwarder (SQLite WAL with synchronous=FULL,
a real OpenBao, delivery switched off so the figure is intake alone), each measured in the
same run by the same client, and the ratio. Not a test: it asserts nothing.

    .venv/bin/python bench/ingest.py [--clicks 300000] [--streams 4] [--unary-calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from elido.forwarder.v1 import forwarder_pb2 as pb  # noqa: E402

from server.devstack._openbao import OpenBaoDevServer  # noqa: E402
from tests.support.forwarder import ForwarderProcess  # noqa: E402

SERVICE = "/elido.forwarder.v1.ForwarderService"
WORKSPACE = "bench-ws"


def build_batches(prefix: str, clicks: int, batch: int) -> list[bytes]:
    """Serialized StreamClicksRequests with unique click ids (built before timing)."""
    now = int(time.time()) - 10
    out = []
    for b in range(clicks // batch):
        request = pb.StreamClicksRequest(batch_id=b + 1)
        for i in range(batch):
            n = b * batch + i
            c = request.clicks.add(
                workspace_id=WORKSPACE,
                click_id=f"{prefix}-{n}",
                destination_url=f"https://shop.example/p/{n % 997}?utm_source=klaviyo&utm_campaign=bf",
                link_id=f"lnk-{n % 101}",
                user_agent="Mozilla/5.0 (bench)",
            )
            c.click_time.seconds = now
            c.identifiers.email = f"user{n % 50_000}@example.com"
        out.append(request.SerializeToString())
    return out


def build_unary(prefix: str, calls: int) -> list[bytes]:
    now = int(time.time()) - 10
    out = []
    for n in range(calls):
        request = pb.ForwardClickRequest()
        c = request.click
        c.workspace_id, c.click_id = WORKSPACE, f"{prefix}-{n}"
        c.destination_url = "https://shop.example/p?utm_source=klaviyo"
        c.click_time.seconds = now
        c.identifiers.email = f"user{n}@example.com"
        out.append(request.SerializeToString())
    return out


def _raw(b: bytes) -> bytes:
    return b


async def stream_rate(
    target: str,
    md: list[tuple[str, str]],
    batches: list[bytes],
    clicks_per_batch: int,
    streams: int,
    window: int = 8,
) -> float:
    """Clicks/s acked over ``streams`` concurrent streams, each with ``window`` batches in flight."""
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 8 << 20)]
    ) as channel:
        call = channel.stream_stream(
            f"{SERVICE}/StreamClicks",
            request_serializer=_raw,
            response_deserializer=pb.StreamClicksResponse.FromString,
        )
        shares = []
        for i in range(streams):
            # Batch ids must increase within a stream: renumber this stream's share (untimed).
            share = []
            for n, raw in enumerate(batches[i::streams]):
                request = pb.StreamClicksRequest.FromString(raw)
                request.batch_id = n + 1
                share.append(request.SerializeToString())
            shares.append(share)

        async def one(renumbered: list[bytes]) -> int:
            credit = asyncio.Semaphore(window)

            async def requests():  # type: ignore[no-untyped-def]
                for raw in renumbered:
                    await credit.acquire()
                    yield raw

            acked = 0
            async for response in call(requests(), metadata=md):
                credit.release()
                acked += len(response.results) or clicks_per_batch
            return acked

        started = time.perf_counter()
        total = sum(await asyncio.gather(*(one(s) for s in shares)))
        return total / (time.perf_counter() - started)


async def unary_rate(
    target: str, md: list[tuple[str, str]], requests: list[bytes], in_flight: int = 64
) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"{SERVICE}/ForwardClick",
            request_serializer=_raw,
            response_deserializer=pb.ForwardClickResponse.FromString,
        )
        it = iter(requests)

        async def worker() -> int:
            n = 0
            for raw in it:
                await call(raw, metadata=md)
                n += 1
            return n

        started = time.perf_counter()
        total = sum(await asyncio.gather(*(worker() for _ in range(in_flight))))
        return total / (time.perf_counter() - started)


def start_noop(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "noop.port"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")])}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "_noop.py"), str(port_file)], env=env
    )
    deadline = time.monotonic() + 15
    while not (port_file.exists() and port_file.read_text()):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("no-op server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


def measure(label: str, fn: Callable[[], float]) -> float:
    rate = fn()
    print(f"  {label:<52} {rate:>12,.0f}/s", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=300_000, help="clicks per StreamClicks run")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument("--unary-calls", type=int, default=20_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        print(
            f"building {2 * args.clicks:,} clicks and {2 * args.unary_calls:,} unary requests...",
            flush=True,
        )
        data = {
            batch: (
                build_batches(f"n{batch}", args.clicks, batch),
                build_batches(f"f{batch}", args.clicks, batch),
            )
            for batch in (100, 500)
        }
        unary = (build_unary("nu", args.unary_calls), build_unary("fu", args.unary_calls))

        noop, noop_target = start_noop(tmp)
        vault = OpenBaoDevServer()
        vault.start()
        forwarder = ForwarderProcess(
            tmp / "fwd",
            vault.addr,
            vault.mint_token(),
            env={"FORWARDER_DELIVERY": "off", "FORWARDER_LOG_LEVEL": "info"},
        )
        results: dict[str, float] = {}
        try:
            forwarder.start()
            forwarder.stub().RegisterIntegration(
                pb.RegisterIntegrationRequest(
                    workspace_id=WORKSPACE, private_key="pk_" + secrets.token_hex(17)
                ),
                metadata=forwarder.admin(),
            )
            md = forwarder.ingest()
            print(
                f"StreamClicks, {args.streams} streams x 8 batches in flight, {args.clicks:,} clicks per run"
            )
            for batch in (100, 500):
                noop_b, fwd_b = data[batch]
                results[f"noop_stream_{batch}"] = measure(
                    f"no-op server, batches of {batch}",
                    lambda b=noop_b, n=batch: asyncio.run(
                        stream_rate(noop_target, [], b, n, args.streams)
                    ),
                )
                results[f"forwarder_stream_{batch}"] = measure(
                    f"forwarder (durable commit), batches of {batch}",
                    lambda b=fwd_b, n=batch: asyncio.run(
                        stream_rate(forwarder.target, md, b, n, args.streams)
                    ),
                )
                print(
                    f"  {'ratio':<52} {results[f'forwarder_stream_{batch}'] / results[f'noop_stream_{batch}']:>12.1%}"
                )
            print(f"ForwardClick, 64 in flight, {args.unary_calls:,} calls per run")
            results["noop_unary"] = measure(
                "no-op server", lambda: asyncio.run(unary_rate(noop_target, [], unary[0]))
            )
            results["forwarder_unary"] = measure(
                "forwarder (durable commit)",
                lambda: asyncio.run(unary_rate(forwarder.target, md, unary[1])),
            )
            print(f"  {'ratio':<52} {results['forwarder_unary'] / results['noop_unary']:>12.1%}")
            with __import__("sqlite3").connect(forwarder.db_path) as db:
                queued = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
            expected = 2 * args.clicks + args.unary_calls
            print(f"outbox rows after the run: {queued:,} (expected {expected:,})")
            print(json.dumps({k: round(v) for k, v in results.items()} | {"outbox_rows": queued}))
        finally:
            forwarder.stop()
            vault.stop()
            noop.kill()
            noop.wait()


if __name__ == "__main__":
    main()
