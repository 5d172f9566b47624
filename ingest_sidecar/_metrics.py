"""The sidecar's Prometheus metrics, in a registry of their own.

A private registry (not the process-global default) keeps several sidecars in one test process
apart and keeps the exposition to what the sidecar owns.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

PREFIX = "elido_sidecar"


class Metrics:
    """Counters and gauges; see docs/sidecar.md for their meaning."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.accepted = Counter(
            f"{PREFIX}_accepted_clicks",
            "Clicks extracted from input and handed to the spool.",
            ["source"],
            registry=r,
        )
        self.spooled = Counter(
            f"{PREFIX}_spooled_clicks",
            "Clicks durably written to the spool (fsync done).",
            registry=r,
        )
        self.sent = Counter(
            f"{PREFIX}_sent_clicks", "Clicks sent on StreamClicks (re-sends included).", registry=r
        )
        self.acked = Counter(
            f"{PREFIX}_acked_clicks",
            "Clicks acknowledged by the forwarder, by disposition.",
            ["disposition"],
            registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_dropped_records",
            "Input records or spooled clicks dropped, by reason (bad input, anonymous, "
            "spool full, rejected by the server, ...).",
            ["source", "reason"],
            registry=r,
        )
        self.invalid_identifiers = Counter(
            f"{PREFIX}_invalid_identifiers",
            "Identifiers found in a click but invalid, ignored.",
            ["kind"],
            registry=r,
        )
        self.spool_bytes = Gauge(
            f"{PREFIX}_spool_bytes", "Bytes of spool segments on disk.", registry=r
        )
        self.spool_full_waits = Counter(
            f"{PREFIX}_spool_full_waits", "Appends that had to wait for spool space.", registry=r
        )
        self.lag_clicks = Gauge(
            f"{PREFIX}_lag_clicks",
            "Spooled clicks not yet acknowledged by the forwarder.",
            registry=r,
        )
        self.lag_seconds = Gauge(
            f"{PREFIX}_lag_seconds",
            "Age of the oldest click spooled and not yet acknowledged (0 when caught up).",
            registry=r,
        )
        self.stream_connected = Gauge(
            f"{PREFIX}_stream_connected", "1 while a StreamClicks stream is open.", registry=r
        )
        self.stream_reconnects = Counter(
            f"{PREFIX}_stream_reconnects",
            "StreamClicks streams that ended and were retried.",
            ["reason"],
            registry=r,
        )
        self.inflight_batches = Gauge(
            f"{PREFIX}_inflight_batches", "Batches sent and not yet acknowledged.", registry=r
        )
        self.http_errors = Counter(
            f"{PREFIX}_http_errors",
            "HTTP requests answered with an error status (4xx/5xx), by status.",
            ["status"],
            registry=r,
        )
        self.tail_offset = Gauge(
            f"{PREFIX}_tail_offset_bytes", "Read position in the tailed log file.", registry=r
        )

    def exposition(self) -> bytes:
        """The Prometheus text exposition."""
        return bytes(generate_latest(self.registry))
