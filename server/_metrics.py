"""Prometheus metrics of the forwarder. Labels never carry keys, emails or click ids."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

INTAKE: Final = Counter(
    "forwarder_intake_total",
    "Clicks and conversions taken in, by kind and disposition.",
    ["kind", "disposition"],
)
RPC_LATENCY: Final = Histogram(
    "forwarder_rpc_duration_seconds",
    "Server-side RPC latency, by method and status code.",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
OUTBOX_DEPTH: Final = Gauge(
    "forwarder_outbox_depth", "Events waiting for delivery (queued or held), all workspaces."
)
OUTBOX_FAILED: Final = Gauge("forwarder_outbox_failed", "Failed events kept for replay.")
DELIVERED: Final = Counter(
    "forwarder_delivered_events_total", "Events Klaviyo accepted, by endpoint.", ["endpoint"]
)
KLAVIYO_RESPONSES: Final = Counter(
    "forwarder_klaviyo_responses_total",
    "Klaviyo request outcomes, by endpoint and outcome.",
    ["endpoint", "outcome"],
)
DELIVERY_LATENCY: Final = Histogram(
    "forwarder_delivery_latency_seconds",
    "Time from intake commit to Klaviyo's 202.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
FAILED_EVENTS: Final = Counter(
    "forwarder_failed_events_total", "Events marked failed, by cause.", ["cause"]
)
CONFIG_RELOADS: Final = Counter(
    "forwarder_config_reload_total",
    "Reloads of rotated material on SIGHUP, by material (tokens, tls) and result"
    " (success, failure; a failure keeps the previous material).",
    ["material", "result"],
)
