"""Tails a JSON-lines access log into the spool, surviving rotation and restarts.

The position (device, inode, offset) is checkpointed after the lines before it are fsynced in
the spool, so a restart resumes where the spool's content ends. Rotation is detected by
polling:

- rename-and-create: the path names a new inode. The old file is read to its end (the proxy
  may still write to it until it reopens its log, so reading continues until it has been quiet
  for ``rotate_wait``), then the new file from its start. If the sidecar was down during the
  rotation, the checkpointed inode is looked up among the log's siblings (``access.log.1``)
  and finished first.
- copytruncate: the same inode shrinks below the offset; reading restarts at 0.

Records without a click id but with a timestamp get an id derived from their content, so a
line read twice (a checkpoint older than the spool) is deduplicated by the forwarder.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ._config import TailConfig
from ._intake import Intake
from ._metrics import Metrics
from ._spool import make_private_dir, write_private

log = structlog.get_logger(__name__)

SOURCE: Final = "log"
# Lines parsed per step; bounds the memory a burst of log lines takes.
READ_BYTES: Final = 128 * 1024
# Chunks being fsynced while the next is parsed (pipelining hides the fsync latency; with
# two, one group commit's wait bounded the log input to ~2 chunks per fsync).
MAX_PENDING: Final = 4
ROTATE_WAIT_S: Final = 1.0
# The checkpoint's JSON, padded with spaces to a fixed size (JSON ignores the padding).
CHECKPOINT_BYTES: Final = 128


@dataclass(slots=True)
class _Open:
    fd: int
    dev: int
    ino: int
    # Where the next read starts (ahead of the checkpoint while appends are pending).
    offset: int
    # Skipping the rest of a line longer than the limit.
    skipping: bool = False


class Tailer:
    """Follows ``config.path``; :meth:`run` until cancelled or :meth:`stop`."""

    def __init__(
        self,
        config: TailConfig,
        checkpoint: Path,
        intake: Intake,
        metrics: Metrics,
        rotate_wait_s: float = ROTATE_WAIT_S,
    ) -> None:
        self._config = config
        self._path = Path(config.path)
        self._checkpoint = checkpoint
        self._intake = intake
        self._metrics = metrics
        self._rotate_wait_s = rotate_wait_s
        self._stop = asyncio.Event()
        self._current: _Open | None = None
        # The previous file after a rename rotation, read until quiet.
        self._draining: _Open | None = None
        self._drain_quiet_since = 0.0
        # Appends in flight and the position to checkpoint once each is durable, in order.
        self._pending: collections.deque[tuple[asyncio.Task[None], _Open, int]] = (
            collections.deque()
        )
        self._checkpoint_fd = -1

    def stop(self) -> None:
        """Stops after the chunk being processed (its lines are spooled, its offset saved)."""
        self._stop.set()

    # -- checkpoint -----------------------------------------------------------------------

    def _load_checkpoint(self) -> tuple[int, int, int] | None:
        try:
            data = json.loads(self._checkpoint.read_text(encoding="utf-8"))
            return int(data["dev"]), int(data["ino"]), int(data["offset"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_checkpoint(self, state: _Open, offset: int | None = None) -> None:
        offset = state.offset if offset is None else offset
        text = json.dumps({"dev": state.dev, "ino": state.ino, "offset": offset})
        if self._checkpoint_fd < 0:
            # First save of this run: a whole new file (it may be of an older, other format).
            write_private(self._checkpoint, text.ljust(CHECKPOINT_BYTES))
            self._checkpoint_fd = os.open(self._checkpoint, os.O_WRONLY)
        else:
            # Overwritten in place, one fixed-size write: a rename per chunk (ext4 flushes
            # the data of a file renamed over another) cost ~10 % of the log input's time.
            # The page cache holds either version whole, which is what a SIGKILL can see.
            os.pwrite(self._checkpoint_fd, text.ljust(CHECKPOINT_BYTES).encode(), 0)
        self._metrics.tail_offset.set(offset)

    async def _settle(self, keep: int) -> None:
        """Waits until at most ``keep`` appends are pending, checkpointing each one done."""
        while len(self._pending) > keep:
            task, state, offset = self._pending.popleft()
            await task
            self._save_checkpoint(state, offset)

    def _open(self, path: Path, offset: int) -> _Open | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        st = os.fstat(fd)
        return _Open(fd, st.st_dev, st.st_ino, offset if offset <= st.st_size else 0)

    def _find_rotated(self, dev: int, ino: int) -> Path | None:
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._path.parent):
                if not entry.name.startswith(self._path.name) or entry.name == self._path.name:
                    continue
                st = entry.stat(follow_symlinks=False)
                if st.st_dev == dev and st.st_ino == ino:
                    return Path(entry.path)
        return None

    def _start(self) -> None:
        saved = self._load_checkpoint()
        if saved is None:
            self._current = self._open(self._path, 0)
            return
        dev, ino, offset = saved
        try:
            st = self._path.stat()
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (dev, ino):
            self._current = self._open(self._path, offset)
            return
        rotated = self._find_rotated(dev, ino)
        if rotated is not None:
            log.info("tail_resuming_rotated_file", path=str(rotated), offset=offset)
            self._draining = self._open(rotated, offset)
            self._drain_quiet_since = time.monotonic()
        self._current = self._open(self._path, 0)

    # -- main loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Tails until stopped."""
        make_private_dir(self._checkpoint.parent)
        self._start()
        try:
            while not self._stop.is_set():
                progressed = await self._poll_once()
                if not progressed:
                    await self._settle(0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self._config.poll_interval_s)
            await self._settle(0)
        finally:
            for task, _, _ in self._pending:
                task.cancel()
            self._pending.clear()
            for state in (self._draining, self._current):
                if state is not None:
                    os.close(state.fd)
            self._draining = self._current = None
            if self._checkpoint_fd >= 0:
                os.close(self._checkpoint_fd)
                self._checkpoint_fd = -1

    async def _poll_once(self) -> bool:
        if self._draining is not None:
            if await self._read_available(self._draining):
                self._drain_quiet_since = time.monotonic()
                return True
            if time.monotonic() - self._drain_quiet_since < self._rotate_wait_s:
                # Keep the new file waiting until the old one has been quiet for a while:
                # lines stay in order and the proxy's last writes to the old file are not lost.
                return False
            await self._finish_partial(self._draining)
            await self._settle(0)
            os.close(self._draining.fd)
            self._draining = None
            if self._current is not None:
                self._save_checkpoint(self._current)
        if self._current is None:
            self._current = self._open(self._path, 0)
            if self._current is None:
                return False
            self._save_checkpoint(self._current)
        if await self._read_available(self._current):
            return True
        return await self._check_rotation()

    async def _check_rotation(self) -> bool:
        # Rotation decisions checkpoint positions: settle the appends in flight first.
        await self._settle(0)
        assert self._current is not None
        try:
            st = self._path.stat()
        except OSError:
            # Renamed away and not yet re-created: keep reading the old file.
            return False
        current = self._current
        if (st.st_dev, st.st_ino) != (current.dev, current.ino):
            log.info("tail_rotated", kind="rename", path=str(self._path))
            self._draining = current
            self._drain_quiet_since = time.monotonic()
            self._current = None
            return True
        size = os.fstat(current.fd).st_size
        if size < current.offset:
            log.info(
                "tail_rotated",
                kind="truncate",
                path=str(self._path),
                lost_offset=current.offset,
                size=size,
            )
            current.offset = 0
            current.skipping = False
            self._save_checkpoint(current)
            return True
        return False

    async def _read_available(self, state: _Open) -> bool:
        """Reads, spools and checkpoints the complete lines available; True if any bytes."""
        data = os.pread(state.fd, READ_BYTES, state.offset)
        if not data:
            return False
        max_line = self._config.max_line_bytes
        lines: list[bytes] = []
        skipped: Counter[str] = Counter()
        last = data.rfind(b"\n")
        if last >= 0:
            # Every complete line of the read at once; the few over the limit taken out after.
            consumed = last + 1
            chunk = data[:last]
            lines = chunk.split(b"\n")
            if state.skipping:
                # The end of a line already found too long.
                state.skipping = False
                del lines[0]
            if lines and max(map(len, lines)) > max_line:
                kept = []
                for line in lines:
                    if len(line) > max_line:
                        self._intake.skip(SOURCE, "line_too_long")
                    else:
                        kept.append(line)
                lines = kept
            if b"\r" in chunk:
                lines = [line.rstrip(b"\r") for line in lines]
            del chunk
        else:
            consumed = 0
        if len(data) - consumed > max_line and not state.skipping:
            # An incomplete line already too long: skipped up to its newline.
            self._intake.skip(SOURCE, "line_too_long")
            state.skipping = True
        if state.skipping:
            consumed = len(data)
        if consumed == 0:
            return False
        state.offset += consumed
        task = asyncio.create_task(self._spool_lines(lines, skipped))
        self._pending.append((task, state, state.offset))
        await self._settle(MAX_PENDING - 1)
        return True

    async def _spool_lines(self, lines: list[bytes], skipped: Counter[str]) -> None:
        records = self._intake.parse_lines(SOURCE, lines, skipped)
        del lines
        payloads = self._intake.prepare(SOURCE, records, self._config.fields, skipped)
        # Not held while the append waits for its fsync (up to MAX_PENDING chunks do).
        del records
        # No timeout: when the spool is full, the log simply waits (it is its own buffer).
        await self._intake.submit(SOURCE, payloads, None)

    async def _finish_partial(self, state: _Open) -> None:
        """A rotated file's last line may lack its newline: take it as a line."""
        data = os.pread(state.fd, self._config.max_line_bytes + 1, state.offset)
        if data and not state.skipping and len(data) <= self._config.max_line_bytes:
            await self._spool_lines([data.rstrip(b"\r")], Counter())
            state.offset += len(data)
