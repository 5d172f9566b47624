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

# -- health of the parts (docs/operator.md, "Metrics"; deploy/prometheus/alerts.yml) ----------
# Label values come from fixed sets in the code (endpoints, outcomes, reasons): none is built
# from request data, so the number of series does not grow with workspaces or traffic.

BUILD_INFO: Final = Gauge(
    "forwarder_build_info",
    "Always 1; the labels say which build runs (version, Python).",
    ["version", "python"],
)
START_TIME: Final = Gauge(
    "forwarder_start_time_seconds", "When this process started serving (Unix time)."
)
VAULT_UP: Final = Gauge(
    "forwarder_vault_up",
    "1 if Vault answered the last health check with our token accepted, else 0.",
)
STORE_UP: Final = Gauge(
    "forwarder_store_up", "1 if the store answered the last housekeeping query, else 0."
)
HOUSEKEEPING_LAST_SUCCESS: Final = Gauge(
    "forwarder_housekeeping_last_success_timestamp_seconds",
    "When the store and Vault checks last completed (Unix time).",
)
LEASES: Final = Counter(
    "forwarder_delivery_leases_total",
    "Delivery leases taken (acquired), refused (held_elsewhere) or lost (lost), by result.",
    ["result"],
)
ACTIVE_LEASES: Final = Gauge(
    "forwarder_delivery_active_leases",
    "Delivery leases this replica holds or is taking right now.",
)
RATELIMIT_BLOCKS: Final = Counter(
    "forwarder_ratelimit_blocks_total",
    "Times an account's limiter stopped sending, by endpoint and reason.",
    ["endpoint", "reason"],
)
RATELIMIT_WAIT: Final = Counter(
    "forwarder_ratelimit_wait_seconds_total",
    "Time delivery waited for an account's rate limit window, by endpoint.",
    ["endpoint"],
)


def record_build_info() -> None:
    """Sets ``forwarder_build_info`` and the start time (once, at start-up)."""
    import platform
    from importlib import metadata

    try:
        version = metadata.version("elido-klaviyo-forwarder")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD_INFO.labels(version, platform.python_version()).set(1)
    START_TIME.set_to_current_time()
