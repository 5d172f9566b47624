"""From raw input records to spooled clicks, with every skipped record counted and explained."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from ._extract import Extractor, Skip
from ._metrics import Metrics
from ._ratelimit import LogLimiter
from ._spool import Spool


class Intake:
    """Extracts clicks from records of one input and appends them to the spool."""

    def __init__(
        self, extractor: Extractor, spool: Spool, metrics: Metrics, limiter: LogLimiter
    ) -> None:
        self._extractor = extractor
        self._spool = spool
        self._metrics = metrics
        self._limiter = limiter

    def skip(self, source: str, reason: str, detail: str = "", **context: Any) -> None:
        """Counts and (rate-limited) logs a record that is not taken."""
        self._metrics.dropped.labels(source, reason).inc()
        if reason != "anonymous":
            # Anonymous clicks are routine, not bad input: counted only.
            self._limiter.warning("input_skipped", reason, source=source, detail=detail, **context)

    def prepare(
        self,
        source: str,
        records: Iterable[Any],
        mapping: Mapping[str, str] | None = None,
        skipped: Counter[str] | None = None,
    ) -> list[bytes]:
        """Serialized clicks for ``records``; the others are counted in ``skipped``."""
        out: list[bytes] = []
        serialize = self._extractor.serialize
        for record in records:
            try:
                payload, invalid = serialize(record, mapping)
            except Skip as exc:
                self.skip(source, exc.reason, exc.detail)
                if skipped is not None:
                    skipped[exc.reason] += 1
                continue
            for kind in invalid:
                self._metrics.invalid_identifiers.labels(kind).inc()
            out.append(payload)
        return out

    def parse_lines(
        self, source: str, lines: list[bytes], skipped: Counter[str] | None = None
    ) -> list[Any]:
        """The JSON values of NDJSON/log ``lines`` (blank ones ignored, bad ones counted)."""
        # One line at a time: joining lines into one array would be faster, but could make
        # one object out of two malformed halves.
        loads = orjson.loads
        out = []
        for line in lines:
            try:
                out.append(loads(line))
            except orjson.JSONDecodeError:
                if line.strip():
                    self.parse_line(source, line, skipped)
        return out

    def parse_line(self, source: str, line: bytes, skipped: Counter[str] | None = None) -> Any:
        """The JSON value of one NDJSON/log line, or None (counted) if it is not JSON."""
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        # orjson refuses invalid UTF-8 like any other error: tell the two apart for the count.
        try:
            line.decode("utf-8")
            reason = "malformed_json"
        except UnicodeDecodeError:
            reason = "not_utf8"
        # The prefix goes through the log redaction (emails masked) like every field.
        self.skip(source, reason, line_prefix=line[:80].decode("utf-8", "replace"))
        if skipped is not None:
            skipped[reason] += 1
        return None

    async def submit(self, source: str, payloads: list[bytes], wait_s: float | None) -> None:
        """Appends ``payloads`` (durably); raises SpoolFull when the wait runs out."""
        if not payloads:
            return
        await self._spool.append(payloads, wait_s)
        self._metrics.accepted.labels(source).inc(len(payloads))
