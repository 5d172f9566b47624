"""The durable click spool: append-only segment files, group-commit fsync, acked deletion.

Layout of ``spool.directory``::

    seg-00000000000000000000.log   records with sequence numbers from 0
    seg-00000000000000004711.log   ... from 4711 (the name is the first record's number)
    ack.cursor                     "<segment> <offset> <seq>": the first unacknowledged record

Each record is framed as ``<u32 length><u32 crc32(payload)><payload>`` (little endian). An
append returns only after an fsync covers it; appends arriving within
``fsync_interval_ms`` share one fsync (group commit). Readers see only fsynced records, so an
acknowledgement can never cover a record that a crash could still take back.

On open, every remaining segment is scanned: the first frame that is short, oversized or fails
its checksum ends the segment, which is cut there (a torn tail after a crash). Segments are
deleted only when the ack cursor has passed all their records, or by the ``drop_oldest``
policy (counted). The cursor is rewritten (rename, no fsync) at most every 100 ms: a stale
cursor only causes re-sends, which the server deduplicates by click id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from . import _tracing
from ._config import FullPolicy, SpoolConfig
from ._metrics import Metrics

log = structlog.get_logger(__name__)

HEADER: Final = struct.Struct("<II")
# A click is at most ~12 KiB; anything far larger in a length field is corruption.
MAX_RECORD_BYTES: Final = 1024 * 1024
CURSOR_NAME: Final = "ack.cursor"
CURSOR_SAVE_INTERVAL_S: Final = 0.1
READ_CHUNK: Final = 256 * 1024


class SpoolFull(Exception):
    """The spool is at its size bound and the caller's wait ran out."""


class SpoolClosed(Exception):
    """The spool was closed."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the spool: before record ``seq``, at ``offset`` of segment ``segment``."""

    seq: int
    segment: int
    offset: int


@dataclass(slots=True)
class _Segment:
    base: int
    path: Path
    size: int
    # Sequence number after the segment's last record; None while it is being written.
    end_seq: int | None


def _segment_path(directory: Path, base: int) -> Path:
    return directory / f"seg-{base:020d}.log"


def write_private(path: Path, text: str) -> None:
    """Replaces ``path`` with ``text`` (via a temporary file and a rename), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def make_private_dir(directory: Path) -> None:
    """Creates ``directory`` (and parents) readable by this user only; warns if it is wider.

    The spool holds recipients' identifiers: other users of the edge host must not read it.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = directory.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "spool_directory_not_private",
            directory=str(directory),
            mode=oct(mode),
            hint="chmod 700 it: the spool holds recipients' identifiers",
        )


def _scan(path: Path) -> tuple[int, int]:
    """(valid byte length, record count) of a segment file: frames up to the first bad one."""
    count = 0
    offset = 0
    # Streamed, not read whole: a segment can be larger than the sidecar's memory budget.
    with path.open("rb", buffering=READ_CHUNK) as f:
        while True:
            header = f.read(HEADER.size)
            if len(header) < HEADER.size:
                break
            length, crc = HEADER.unpack(header)
            if length > MAX_RECORD_BYTES:
                break
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            offset += HEADER.size + length
            count += 1
    return offset, count


class Spool:
    """The spool. One writer side (any number of concurrent appenders) and one reader."""

    def __init__(self, config: SpoolConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._dir = Path(config.directory)
        self._segments: collections.OrderedDict[int, _Segment] = collections.OrderedDict()
        self._fd = -1
        self._current: _Segment | None = None
        self._next_seq = 0
        self._write_pos = Position(0, 0, 0)
        self._durable = Position(0, 0, 0)
        self._ack = Position(0, 0, 0)
        self._total_bytes = 0
        self._to_sync: list[int] = []
        self._to_close: list[int] = []
        self._dir_dirty = False
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._dirty = asyncio.Event()
        self._durable_changed = asyncio.Event()
        self._space = asyncio.Event()
        self._cursor_dirty = False
        self._append_times: collections.deque[tuple[int, float]] = collections.deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._sync_error: OSError | None = None

    # -- opening and recovery ---------------------------------------------------------------

    @classmethod
    async def open(cls, config: SpoolConfig, metrics: Metrics) -> Spool:
        """Opens (creating, or recovering) the spool in ``config.directory``."""
        spool = cls(config, metrics)
        await asyncio.to_thread(spool._recover)
        spool._tasks = [
            asyncio.create_task(spool._flush_loop(), name="spool-flush"),
            asyncio.create_task(spool._cursor_loop(), name="spool-cursor"),
        ]
        return spool

    def _read_cursor(self) -> Position | None:
        try:
            text = (self._dir / CURSOR_NAME).read_text(encoding="ascii")
            segment, offset, seq = (int(x) for x in text.split())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return Position(seq, segment, offset)

    def _recover(self) -> None:
        make_private_dir(self._dir)
        bases = sorted(
            int(p.name[4:-4]) for p in self._dir.glob("seg-*.log") if p.name[4:-4].isdigit()
        )
        cursor = self._read_cursor()
        if cursor is not None:
            for base in [b for b in bases if b < cursor.segment]:
                _segment_path(self._dir, base).unlink(missing_ok=True)
            bases = [b for b in bases if b >= cursor.segment]
        for i, base in enumerate(bases):
            path = _segment_path(self._dir, base)
            size = path.stat().st_size
            valid, count = _scan(path)
            if valid < size:
                # A torn write after a crash, or corruption: everything after it is unusable.
                log.warning(
                    "spool_segment_cut",
                    segment=path.name,
                    valid_bytes=valid,
                    cut_bytes=size - valid,
                )
                self._metrics.dropped.labels("spool", "corrupt_tail").inc()
                with path.open("r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            last = i == len(bases) - 1
            self._segments[base] = _Segment(base, path, valid, None if last else base + count)
            self._total_bytes += valid
            self._next_seq = max(self._next_seq, base + count)
        if cursor is not None and cursor.segment in self._segments:
            seg = self._segments[cursor.segment]
            self._ack = (
                cursor
                if cursor.offset <= seg.size
                else Position(
                    seg.end_seq if seg.end_seq is not None else self._next_seq, seg.base, seg.size
                )
            )
        elif self._segments:
            first = next(iter(self._segments.values()))
            self._ack = Position(first.base, first.base, 0)
        else:
            self._ack = Position(self._next_seq, self._next_seq, 0)
        if self._segments:
            last_seg = next(reversed(self._segments.values()))
            if last_seg.size >= self._config.segment_bytes:
                last_seg.end_seq = self._next_seq
                self._open_segment(self._next_seq)
            else:
                self._current = last_seg
                self._fd = os.open(last_seg.path, os.O_WRONLY | os.O_CREAT, 0o600)
                os.lseek(self._fd, last_seg.size, os.SEEK_SET)
        else:
            self._open_segment(self._next_seq)
        assert self._current is not None
        self._write_pos = Position(self._next_seq, self._current.base, self._current.size)
        self._durable = self._write_pos
        self._gc()
        self._metrics.spool_bytes.set(self._total_bytes)
        self._update_lag()
        log.info(
            "spool_opened",
            directory=str(self._dir),
            segments=len(self._segments),
            unacked=self._durable.seq - self._ack.seq,
            bytes=self._total_bytes,
        )

    def _open_segment(self, base: int) -> None:
        path = _segment_path(self._dir, base)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._current = _Segment(base, path, 0, None)
        self._segments[base] = self._current
        self._dir_dirty = True

    # -- writing ---------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        """Bytes of segment files on disk."""
        return self._total_bytes

    @property
    def unacked(self) -> int:
        """Durable records not yet acknowledged."""
        return max(0, self._durable.seq - self._ack.seq)

    def _has_room(self, size: int) -> bool:
        return self._total_bytes + size <= self._config.max_bytes

    async def append(self, payloads: Sequence[bytes], wait_s: float | None = None) -> None:
        """Writes ``payloads`` and returns once they are fsynced.

        When the spool is full, the ``block`` policy waits up to ``wait_s`` (None: forever) for
        acknowledgements to free space and then raises :class:`SpoolFull`; ``drop_oldest``
        deletes the oldest segments instead. All of ``payloads`` are taken or none.
        """
        if not payloads:
            return
        if self._closed:
            raise SpoolClosed
        # One buffer, one write: each frame's header and payload joined once, not copied twice.
        parts: list[bytes] = []
        pack = HEADER.pack
        crc32 = zlib.crc32
        for payload in payloads:
            parts.append(pack(len(payload), crc32(payload)))
            parts.append(payload)
        data = b"".join(parts)
        del parts
        if len(data) > self._config.max_bytes - self._config.segment_bytes:
            raise SpoolFull("larger than the spool")
        if not self._has_room(len(data)):
            await self._make_room(len(data), wait_s)
        if self._sync_error is not None:
            raise self._sync_error
        assert self._current is not None
        if self._current.size > 0 and self._current.size + len(data) > self._config.segment_bytes:
            self._rotate()
        assert self._current is not None
        os.write(self._fd, data)
        size = len(data)
        del data
        self._current.size += size
        self._total_bytes += size
        self._next_seq += len(payloads)
        _tracing.spooled(self._next_seq - len(payloads), self._next_seq)
        self._write_pos = Position(self._next_seq, self._current.base, self._current.size)
        now = time.monotonic()
        if not self._append_times or now - self._append_times[-1][1] > 0.05:
            self._append_times.append((self._next_seq - len(payloads), now))
        self._metrics.spool_bytes.set(self._total_bytes)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._next_seq, future))
        self._dirty.set()
        await future
        self._metrics.spooled.inc(len(payloads))

    def _rotate(self) -> None:
        assert self._current is not None
        self._current.end_seq = self._next_seq
        self._to_sync.append(self._fd)
        self._to_close.append(self._fd)
        self._open_segment(self._next_seq)

    async def _make_room(self, size: int, wait_s: float | None) -> None:
        if self._config.full_policy is FullPolicy.DROP_OLDEST:
            while not self._has_room(size):
                self._drop_oldest()
            return
        self._metrics.spool_full_waits.inc()
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while not self._has_room(size):
            if self._closed:
                raise SpoolClosed
            self._space.clear()
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise SpoolFull("spool full")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._space.wait(), timeout)

    def _drop_oldest(self) -> None:
        oldest = next(iter(self._segments.values()))
        if oldest is self._current:
            self._rotate()
        oldest = self._segments.pop(oldest.base)
        end = oldest.end_seq if oldest.end_seq is not None else self._next_seq
        lost = end - max(oldest.base, self._ack.seq)
        if lost > 0:
            self._metrics.dropped.labels("spool", "spool_full").inc(lost)
            log.warning("spool_full_dropped_oldest", segment=oldest.path.name, clicks=lost)
        oldest.path.unlink(missing_ok=True)
        self._dir_dirty = True
        self._total_bytes -= oldest.size
        first = next(iter(self._segments.values()))
        if self._ack.seq < first.base:
            self._ack = Position(first.base, first.base, 0)
            self._cursor_dirty = True
        self._metrics.spool_bytes.set(self._total_bytes)

    async def _flush_loop(self) -> None:
        interval = self._config.fsync_interval_ms / 1000.0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if interval > 0 and not self._closed:
                await asyncio.sleep(interval)
            await self._sync_once()

    async def _sync_once(self) -> None:
        target = self._write_pos
        fds = [*self._to_sync, self._fd]
        to_close, self._to_close, self._to_sync = self._to_close, [], []
        dir_dirty, self._dir_dirty = self._dir_dirty, False
        try:
            if self._config.fsync:
                await asyncio.to_thread(self._sync_files, fds, dir_dirty)
        except OSError as exc:
            # Data whose fsync failed cannot be trusted (the kernel may have dropped the
            # dirty pages): fail the waiters, and every later append, loudly.
            log.error("spool_fsync_failed", error=str(exc))
            self._sync_error = exc
            while self._waiters:
                _, fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            for fd in to_close:
                os.close(fd)
        self._durable = max(self._durable, target)
        while self._waiters and self._waiters[0][0] <= target.seq:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        self._durable_changed.set()
        self._update_lag()

    def _sync_files(self, fds: list[int], dir_dirty: bool) -> None:
        for fd in fds:
            os.fsync(fd)
        if dir_dirty:
            dfd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    # -- reading and acknowledging -----------------------------------------------------------

    @property
    def ack_position(self) -> Position:
        """The first unacknowledged record."""
        return self._ack

    def reader(self) -> SpoolReader:
        """A reader starting at the first unacknowledged record."""
        return SpoolReader(self)

    def ack(self, upto: Position) -> None:
        """Every record before ``upto`` is acknowledged: its segment may go."""
        if upto.seq <= self._ack.seq:
            return
        self._ack = upto
        self._cursor_dirty = True
        self._gc()
        self._update_lag()

    def _gc(self) -> None:
        freed = False
        while len(self._segments) > 1:
            oldest = next(iter(self._segments.values()))
            if oldest is self._current or oldest.end_seq is None:
                break
            if oldest.end_seq > self._ack.seq:
                break
            self._segments.popitem(last=False)
            oldest.path.unlink(missing_ok=True)
            self._dir_dirty = True
            self._total_bytes -= oldest.size
            freed = True
        if freed:
            self._metrics.spool_bytes.set(self._total_bytes)
            self._space.set()

    def _update_lag(self) -> None:
        unacked = self.unacked
        self._metrics.lag_clicks.set(unacked)
        while len(self._append_times) > 1 and self._append_times[1][0] <= self._ack.seq:
            self._append_times.popleft()
        if unacked and self._append_times and self._append_times[0][0] <= self._ack.seq + 1:
            self._metrics.lag_seconds.set(time.monotonic() - self._append_times[0][1])
        elif not unacked:
            self._metrics.lag_seconds.set(0)

    def _save_cursor(self) -> None:
        ack = self._ack
        write_private(self._dir / CURSOR_NAME, f"{ack.segment} {ack.offset} {ack.seq}\n")

    async def _cursor_loop(self) -> None:
        while True:
            await asyncio.sleep(CURSOR_SAVE_INTERVAL_S)
            if self._cursor_dirty:
                self._cursor_dirty = False
                try:
                    self._save_cursor()
                except OSError as exc:
                    self._cursor_dirty = True
                    log.warning("spool_cursor_save_failed", error=str(exc))
            self._update_lag()

    async def wait_durable_change(self) -> None:
        """Returns after the next fsync that made records readable."""
        self._durable_changed.clear()
        await self._durable_changed.wait()

    async def close(self) -> None:
        """Flushes pending appends, saves the cursor and closes the files."""
        if self._closed:
            return
        self._closed = True
        self._space.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._waiters or self._to_sync:
            await self._sync_once()
        with contextlib.suppress(OSError):
            self._save_cursor()
        for fd in self._to_close:
            os.close(fd)
        self._to_close = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._durable_changed.set()


class SpoolReader:
    """Reads durable records in order; :meth:`rewind` goes back to the first unacked one."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._pos = spool.ack_position
        self._file: int = -1
        self._file_base = -1
        self._buf = b""
        self._buf_offset = 0

    @property
    def position(self) -> Position:
        """Where the next read starts."""
        return self._pos

    def rewind(self) -> None:
        """Moves back to the first unacknowledged record (after a reconnect)."""
        self._pos = self._spool.ack_position
        self._buf = b""

    def close(self) -> None:
        """Closes the open segment file."""
        if self._file >= 0:
            os.close(self._file)
            self._file = -1

    def _available(self) -> bool:
        return self._pos.seq < self._spool._durable.seq

    async def read(self, max_records: int, linger_s: float) -> tuple[list[bytes], Position]:
        """Up to ``max_records`` payloads and the position after them.

        Waits for the first record, then up to ``linger_s`` for the batch to fill.
        """
        spool = self._spool
        while not self._available():
            if spool._closed:
                raise SpoolClosed
            await spool.wait_durable_change()
        out: list[bytes] = []
        deadline = time.monotonic() + linger_s
        while True:
            self._collect(out, max_records)
            remaining = deadline - time.monotonic()
            if len(out) >= max_records or remaining <= 0 or spool._closed:
                return out, self._pos
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spool.wait_durable_change(), remaining)

    def _collect(self, out: list[bytes], max_records: int) -> None:
        spool = self._spool
        durable = spool._durable
        while len(out) < max_records and self._pos.seq < durable.seq:
            segments = spool._segments
            if self._pos.segment not in segments:
                # Dropped by the drop_oldest policy, or acked past: skip to what remains.
                self._pos = max(self._pos, spool.ack_position)
                if self._pos.segment not in segments:
                    first = next(iter(segments.values()))
                    self._pos = Position(first.base, first.base, 0)
                self._buf = b""
                continue
            seg = segments[self._pos.segment]
            limit = durable.offset if durable.segment == seg.base else seg.size
            if self._pos.offset >= limit:
                if seg.end_seq is None or durable.segment == seg.base:
                    return
                following = [b for b in segments if b > seg.base]
                if not following:
                    return
                self._pos = Position(following[0], following[0], 0)
                self._buf = b""
                continue
            if not self._take(seg, limit, out, max_records):
                # A bad frame inside durable data: the rest of this segment is unreadable.
                log.error("spool_corrupt_record", segment=seg.path.name, offset=self._pos.offset)
                spool._metrics.dropped.labels("spool", "corrupt").inc()
                end = seg.end_seq if seg.end_seq is not None else self._pos.seq
                self._pos = Position(end, seg.base, limit)

    def _take(self, seg: _Segment, limit: int, out: list[bytes], max_records: int) -> bool:
        """Appends the records of ``seg`` before ``limit`` to ``out`` (up to ``max_records``).

        One loop over the read buffer, the position updated once at the end: a batch of 500
        is read in bulk. False at a bad frame (the position is left before it).
        """
        if self._file_base != seg.base:
            self.close()
            self._file = os.open(seg.path, os.O_RDONLY)
            self._file_base = seg.base
            self._buf = b""
        header = HEADER.size
        unpack = HEADER.unpack_from
        crc32 = zlib.crc32
        offset = self._pos.offset
        seq = self._pos.seq
        buf = self._buf
        buf_offset = self._buf_offset
        ok = True
        while len(out) < max_records and offset < limit:
            rel = offset - buf_offset
            if not buf or rel < 0 or rel + header > len(buf):
                self._fill(offset, limit)
                buf, buf_offset, rel = self._buf, offset, 0
                if header > len(buf):
                    ok = False
                    break
            length, crc = unpack(buf, rel)
            end = offset + header + length
            if length > MAX_RECORD_BYTES or end > limit:
                ok = False
                break
            if rel + header + length > len(buf):
                self._fill(offset, limit)
                buf, buf_offset, rel = self._buf, offset, 0
            payload = buf[rel + header : rel + header + length]
            if len(payload) != length or crc32(payload) != crc:
                ok = False
                break
            out.append(payload)
            offset = end
            seq += 1
        self._pos = Position(seq, seg.base, offset)
        return ok

    def _fill(self, offset: int, limit: int) -> None:
        size = min(READ_CHUNK, limit - offset)
        data = os.pread(self._file, size, offset)
        if len(data) >= HEADER.size:
            length, _ = HEADER.unpack_from(data, 0)
            need = HEADER.size + min(length, MAX_RECORD_BYTES)
            if need > len(data) and offset + need <= limit:
                data = os.pread(self._file, need, offset)
        self._buf = data
        self._buf_offset = offset
