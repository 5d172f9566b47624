"""The sidecar's Prometheus metrics, in a registry of its own.

Written here rather than with ``prometheus_client``: the sidecar needs a dozen counters and
gauges and their text exposition, and the library's import (its HTTP servers, WSGI, ...) cost
~4 MB of the sidecar's 50 MB budget. A private registry keeps several sidecars in one test
process apart and keeps the exposition to what the sidecar owns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

PREFIX: Final = "elido_sidecar"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Child:
    """One labelled series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount``."""
        self.value += amount

    def set(self, value: float) -> None:
        """Sets the value (gauges)."""
        self.value = float(value)


class _Metric:
    kind = "untyped"
    suffix = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] | list[str] = (),
        *,
        registry: Registry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._children[()] = _Child()
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        """The series for ``values`` (one per label name)."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Child()
        return child

    def inc(self, amount: float = 1.0) -> None:
        """Adds ``amount`` to the unlabelled series."""
        self._children[()].value += amount

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) of every series."""
        return [
            (self.name + self.suffix, dict(zip(self.labelnames, key, strict=True)), child.value)
            for key, child in self._children.items()
        ]

    def exposition(self) -> list[str]:
        lines = [
            f"# HELP {self.name}{self.suffix} {self.documentation}",
            f"# TYPE {self.name}{self.suffix} {self.kind}",
        ]
        for name, labels, value in self.samples():
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(
                f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
            )
        return lines


class Counter(_Metric):
    """A monotonically increasing count, exposed as ``<name>_total``."""

    kind = "counter"
    suffix = "_total"


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float) -> None:
        """Sets the unlabelled series."""
        self._children[()].value = float(value)


class Registry:
    """The metrics of one sidecar."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> None:
        """Adds ``metric`` to the exposition."""
        self._metrics.append(metric)

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of sample ``name`` with exactly ``labels``, or None (for tests and checks)."""
        wanted = dict(labels or {})
        for metric in self._metrics:
            for sample, sample_labels, value in metric.samples():
                if sample == name and sample_labels == wanted:
                    return value
        return None

    def exposition(self) -> bytes:
        """The Prometheus text exposition format (0.0.4)."""
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.exposition())
        return ("\n".join(lines) + "\n").encode()


class Metrics:
    """Counters and gauges; see docs/sidecar.md for their meaning."""

    def __init__(self) -> None:
        self.registry = Registry()
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
        return self.registry.exposition()
