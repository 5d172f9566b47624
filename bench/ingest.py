"""Durable-ingest throughput of the forwarder beside the ceilings measured in the same run.

Prints clicks/s through StreamClicks (batches of 100 and 500) and ForwardClick calls/s with
64 in flight, for the real forwarder (a real OpenBao, delivery switched off so the figure is
intake alone) on each store — SQLite (WAL, synchronous=FULL) and PostgreSQL (fsync and
synchronous_commit on, the server on this machine) — beside two ceilings:

* the gRPC ceiling: a no-op grpc.aio server driven by the same client;
* the storage ceiling: the same rows written straight into the same schema with the same
  durability by a bare script, no gRPC, no validation (``bench/_storage.py``).

Every run, the forwarder's and each ceiling's, starts on an empty store: a store that already
holds earlier runs' rows inserts more slowly, which would make the order of runs a figure.

Not a test: it asserts nothing.

    .venv/bin/python bench/ingest.py [--store sqlite|postgres|both] [--clicks 300000]
                                     [--streams 4] [--batches 100,500] [--unary-calls 20000]
                                     [--profile DIR]

``--profile DIR`` samples the forwarder (and its intake workers) with py-spy during each of
its runs: raw collapsed stacks in DIR, the top functions by own and total time printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]

from elido.forwarder.v1 import forwarder_pb2 as pb  # noqa: E402

from bench._common import Profiler, tree_cpu_s  # noqa: E402
from bench._storage import Row, postgres_ceiling, rows_of, sqlite_ceiling  # noqa: E402
from server.devstack._openbao import OpenBaoDevServer  # noqa: E402
from tests.support.forwarder import ForwarderProcess  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

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


def cpu_per_click(label: str, pid: int | None, clicks: int, fn: Callable[[], float]) -> float:
    """Run ``fn``; print the CPU µs per click of ``pid`` and its children (None: this
    process). Other load on a shared machine moves this figure far less than a rate."""
    before = time.process_time() if pid is None else tree_cpu_s(pid)
    rate = fn()
    used = (time.process_time() if pid is None else tree_cpu_s(pid)) - before
    print(f"  {label:<52} {used / clicks * 1e6:>10.1f} µs", flush=True)
    return rate


def profiled(
    args: argparse.Namespace, pid: int, name: str, run: Callable[[], float]
) -> Callable[[], float]:
    """``run``, sampled by py-spy when --profile is given (the profile printed after it)."""
    if args.profile is None:
        return run

    def sampled() -> float:
        profiler = Profiler(pid, args.profile / f"{name}.txt", subprocesses=True)
        time.sleep(0.5)  # py-spy attaches
        try:
            return run()
        finally:
            print(f"  py-spy profile of the forwarder, {name}:\n{profiler.stop()}")

    return sampled


class _Forwarder:
    """A fresh forwarder (its own empty store) per measured run, as each ceiling starts from
    an empty store: a store already holding earlier runs' rows inserts more slowly."""

    def __init__(
        self, store: str, tmp: Path, vault: OpenBaoDevServer, postgres: PostgresServer | None
    ) -> None:
        self._store, self._tmp, self._vault, self._postgres = store, tmp, vault, postgres
        self._runs = 0

    @contextlib.contextmanager
    def started(self) -> Iterator[tuple[ForwarderProcess, list[tuple[str, str]]]]:
        self._runs += 1
        url = self._postgres.create_database() if self._postgres is not None else ""
        forwarder = ForwarderProcess(
            self._tmp / f"fwd-{self._store}-{self._runs}",
            self._vault.addr,
            self._vault.mint_token(),
            env={"FORWARDER_DELIVERY": "off", "FORWARDER_LOG_LEVEL": "info"},
            database_url=url,
        )
        try:
            forwarder.start()
            forwarder.stub().RegisterIntegration(
                pb.RegisterIntegrationRequest(
                    workspace_id=WORKSPACE, private_key="pk_" + secrets.token_hex(17)
                ),
                metadata=forwarder.admin(),
            )
            yield forwarder, forwarder.ingest()
        finally:
            forwarder.stop()


def run_store(
    store: str,
    args: argparse.Namespace,
    tmp: Path,
    vault: OpenBaoDevServer,
    postgres: PostgresServer | None,
    data: dict[int, list[bytes]],
    unary: list[bytes],
    noop: dict[str, float],
) -> dict[str, float]:
    """The forwarder on ``store`` beside that store's ceiling; prints as it goes."""
    results: dict[str, float] = {}
    fresh = _Forwarder(store, tmp, vault, postgres)
    print(
        f"{store}: StreamClicks, {args.streams} streams x 8 batches in flight, "
        f"{args.clicks:,} clicks per run, each run on an empty store"
    )
    outbox_rows = 0
    for batch in args.batches:
        batches, label = data[batch], f"batches of {batch}"
        with fresh.started() as (forwarder, md):
            assert forwarder.process is not None
            pid = forwarder.process.pid

            def forwarded(
                b: list[bytes] = batches,
                n: int = batch,
                name: str = label,
                target: str = forwarder.target,
                md: list[tuple[str, str]] = md,
                pid: int = pid,
            ) -> float:
                run = profiled(
                    args,
                    pid,
                    f"{store}-stream-{n}",
                    lambda: asyncio.run(stream_rate(target, md, b, n, args.streams)),
                )
                return measure(f"forwarder (durable commit), {name}", run)

            fwd = results[f"{store}_stream_{batch}"] = cpu_per_click(
                "  its CPU per click (server and intake workers)", pid, args.clicks, forwarded
            )
            outbox_rows += forwarder.database.value("SELECT count(*) FROM outbox")
        rows = rows_of(batches)
        if postgres is not None:
            ceiling = measure(
                f"storage ceiling (COPY, {args.streams} connections), {label}",
                lambda r=rows: postgres_ceiling(postgres.create_database(), r, args.streams),
            )
        else:

            def bare(r: list[list[Row]] = rows, n: int = batch) -> float:
                return measure(
                    f"storage ceiling (bare inserts), batches of {n}",
                    lambda: sqlite_ceiling(tmp / f"ceiling-{n}.db", r),
                )

            ceiling = cpu_per_click("  its CPU per click", None, args.clicks, bare)
        results[f"{store}_ceiling_{batch}"] = ceiling
        print(f"  {'forwarder / storage ceiling':<52} {fwd / ceiling:>12.1%}")
        print(f"  {'forwarder / no-op gRPC ceiling':<52} {fwd / noop[f'stream_{batch}']:>12.1%}")
    if args.unary_calls:
        print(f"{store}: ForwardClick, 64 in flight, {args.unary_calls:,} calls per run")
        with fresh.started() as (forwarder, md):
            assert forwarder.process is not None
            pid = forwarder.process.pid
            fwd = results[f"{store}_unary"] = cpu_per_click(
                "  its CPU per call (server and intake workers)",
                pid,
                len(unary),
                lambda: measure(
                    "forwarder (durable commit)",
                    profiled(
                        args,
                        pid,
                        f"{store}-unary",
                        lambda: asyncio.run(unary_rate(forwarder.target, md, unary)),
                    ),
                ),
            )
            outbox_rows += forwarder.database.value("SELECT count(*) FROM outbox")
        print(f"  {'forwarder / no-op gRPC ceiling':<52} {fwd / noop['unary']:>12.1%}")
    expected = len(args.batches) * args.clicks + args.unary_calls
    print(f"  outbox rows after the runs: {outbox_rows:,} (expected {expected:,})")
    results[f"{store}_outbox_rows"] = outbox_rows
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clicks", type=int, default=300_000, help="clicks per StreamClicks run")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument(
        "--batches",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100, 500],
        help="StreamClicks batch sizes, comma-separated (default 100,500)",
    )
    parser.add_argument("--unary-calls", type=int, default=20_000, help="0 skips ForwardClick")
    parser.add_argument("--profile", type=Path, help="py-spy raw profiles of the forwarder here")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        print(f"building {args.clicks:,} clicks per batch size, per store...", flush=True)
        data = {
            store: {
                batch: build_batches(f"{store}{batch}", args.clicks, batch)
                for batch in args.batches
            }
            for store in ["noop", *stores]
        }
        unary = {store: build_unary(f"{store}u", args.unary_calls) for store in ["noop", *stores]}

        noop_proc, noop_target = start_noop(tmp)
        vault = OpenBaoDevServer()
        vault.start()
        postgres = PostgresServer() if "postgres" in stores else None
        results: dict[str, float] = {}
        try:
            if postgres is not None:
                postgres.start()
                print(f"{postgres.version} on this machine (fsync=on, synchronous_commit=on)")
            print("no-op gRPC server (the gRPC ceiling)")
            noop = {}
            for batch in args.batches:
                noop[f"stream_{batch}"] = measure(
                    f"StreamClicks, batches of {batch}",
                    lambda b=data["noop"][batch], n=batch: asyncio.run(
                        stream_rate(noop_target, [], b, n, args.streams)
                    ),
                )
            if args.unary_calls:
                noop["unary"] = cpu_per_click(
                    "  its CPU per call",
                    noop_proc.pid,
                    len(unary["noop"]),
                    lambda: measure(
                        "ForwardClick, 64 in flight",
                        lambda: asyncio.run(unary_rate(noop_target, [], unary["noop"])),
                    ),
                )
            results |= {f"noop_{k}": v for k, v in noop.items()}
            for store in stores:
                results |= run_store(
                    store, args, tmp, vault, postgres if store == "postgres" else None,
                    data[store], unary[store], noop,
                )  # fmt: skip
            print(json.dumps({k: round(v) for k, v in results.items()}))
        finally:
            vault.stop()
            if postgres is not None:
                postgres.close()
            noop_proc.kill()
            noop_proc.wait()


if __name__ == "__main__":
    main()
