import asyncio
import os
from pathlib import Path

import pytest

from ingest_sidecar import FullPolicy, Metrics, Spool, SpoolConfig, SpoolFull


def config(tmp: Path, **overrides: object) -> SpoolConfig:
    values: dict[str, object] = {
        "directory": str(tmp / "spool"),
        "segment_bytes": 4096,
        "max_bytes": 64 * 1024,
        "fsync_interval_ms": 1.0,
    }
    values.update(overrides)
    return SpoolConfig(**values)  # type: ignore[arg-type]


def payload(i: int, size: int = 100) -> bytes:
    return f"{i:08d}".encode().ljust(size, b"x")


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def read_all(spool: Spool, expected: int) -> list[bytes]:
    reader = spool.reader()
    out: list[bytes] = []
    while len(out) < expected:
        got, _ = await asyncio.wait_for(reader.read(1000, 0.0), 2.0)
        out.extend(got)
    reader.close()
    return out


async def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = await Spool.open(config(tmp_path), Metrics())
    await asyncio.gather(*(spool.append([payload(i)]) for i in range(200)))
    assert len(list((tmp_path / "spool").glob("seg-*.log"))) > 3
    got = await read_all(spool, 200)
    assert got == [payload(i) for i in range(200)]
    await spool.close()


async def test_restart_resumes_from_the_first_unacked_record(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = await Spool.open(config(tmp_path), metrics)
    await spool.append([payload(i) for i in range(30)])
    await spool.append([payload(i) for i in range(30, 200)])
    reader = spool.reader()
    first, end = await reader.read(120, 0.0)
    assert first == [payload(i) for i in range(120)]
    spool.ack(end)
    await spool.close()

    spool = await Spool.open(config(tmp_path), Metrics())
    assert spool.unacked == 80
    assert await read_all(spool, 80) == [payload(i) for i in range(120, 200)]
    await spool.close()


async def test_segments_are_deleted_only_when_fully_acked(tmp_path: Path) -> None:
    spool = await Spool.open(config(tmp_path), Metrics())
    await spool.append([payload(i) for i in range(35)])  # one segment of ~3.9 KB
    await spool.append([payload(i) for i in range(35, 70)])  # a second
    directory = tmp_path / "spool"
    assert len(list(directory.glob("seg-*.log"))) == 2
    reader = spool.reader()
    _, end = await reader.read(34, 0.0)
    spool.ack(end)
    assert len(list(directory.glob("seg-*.log"))) == 2, "a record of segment 1 is unacked"
    _, end = await reader.read(1, 0.0)
    spool.ack(end)
    assert len(list(directory.glob("seg-*.log"))) == 1
    reader.close()
    await spool.close()


async def test_a_torn_tail_is_cut_on_restart(tmp_path: Path) -> None:
    spool = await Spool.open(config(tmp_path, segment_bytes=1 << 20, max_bytes=4 << 20), Metrics())
    await spool.append([payload(i) for i in range(10)])
    await spool.close()
    [segment] = (tmp_path / "spool").glob("seg-*.log")
    whole = segment.read_bytes()
    # A crash in the middle of an append: half a frame at the end.
    segment.write_bytes(whole + whole[:60])

    metrics = Metrics()
    spool = await Spool.open(config(tmp_path, segment_bytes=1 << 20, max_bytes=4 << 20), metrics)
    assert segment.stat().st_size == len(whole)
    assert (
        metric(
            metrics, "elido_sidecar_dropped_records_total", source="spool", reason="corrupt_tail"
        )
        == 1
    )
    await spool.append([payload(10)])
    assert await read_all(spool, 11) == [payload(i) for i in range(11)]
    await spool.close()


async def test_a_corrupt_record_ends_its_segment(tmp_path: Path) -> None:
    cfg = config(tmp_path, segment_bytes=1 << 20, max_bytes=4 << 20)
    spool = await Spool.open(cfg, Metrics())
    await spool.append([payload(i) for i in range(10)])
    await spool.close()
    [segment] = (tmp_path / "spool").glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    data[5 * 108 + 20] ^= 0xFF  # flip a byte inside record 5's payload
    segment.write_bytes(bytes(data))
    spool = await Spool.open(cfg, Metrics())
    assert await read_all(spool, 5) == [payload(i) for i in range(5)]
    assert spool.unacked == 5
    await spool.close()


async def test_full_spool_blocks_until_acks_free_space(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = await Spool.open(config(tmp_path, max_bytes=16 * 1024), metrics)
    for i in range(0, 140, 35):
        await spool.append([payload(j) for j in range(i, i + 35)])  # 4 segments, ~15.1 KB
    with pytest.raises(SpoolFull):
        await spool.append([payload(999)] * 20, wait_s=0.05)
    blocked = asyncio.create_task(spool.append([payload(140)] * 20, wait_s=None))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    reader = spool.reader()
    _, end = await reader.read(35, 0.0)
    spool.ack(end)
    await asyncio.wait_for(blocked, 2.0)
    assert (
        metric(metrics, "elido_sidecar_dropped_records_total", source="spool", reason="spool_full")
        == 0
    )
    assert spool.unacked == 105 + 20
    reader.close()
    await spool.close()


async def test_drop_oldest_policy_discards_and_counts(tmp_path: Path) -> None:
    metrics = Metrics()
    spool = await Spool.open(
        config(tmp_path, max_bytes=16 * 1024, full_policy=FullPolicy.DROP_OLDEST), metrics
    )
    for i in range(0, 175, 35):
        await asyncio.wait_for(spool.append([payload(j) for j in range(i, i + 35)]), 1.0)
    assert spool.total_bytes <= 16 * 1024
    assert (
        metric(metrics, "elido_sidecar_dropped_records_total", source="spool", reason="spool_full")
        == 35
    )
    got = await read_all(spool, 140)
    assert got == [payload(i) for i in range(35, 175)]
    await spool.close()


async def test_appends_are_fsynced_before_they_return(tmp_path: Path) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    os.fsync = counting_fsync  # type: ignore[assignment]  # only ever called with ints here
    try:
        spool = await Spool.open(config(tmp_path, fsync_interval_ms=5.0), Metrics())
        synced.clear()
        # 50 concurrent appends share a handful of fsyncs (group commit).
        await asyncio.gather(*(spool.append([payload(i)]) for i in range(50)))
        assert 1 <= len(synced) <= 10
        await spool.close()
    finally:
        os.fsync = real_fsync
