"""OpenTelemetry set-up from the standard ``OTEL_*`` variables, shared by server and sidecar.

Tracing is off unless ``OTEL_TRACES_EXPORTER`` names an exporter: unset, empty or ``none`` is
off (unlike OpenTelemetry's own default of ``otlp``: exporting to a collector that is not
there would only log errors), and so is ``OTEL_SDK_DISABLED=true``. ``otlp`` speaks ``grpc``
unless ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` says
``http/protobuf``; the exporters read their own ``OTEL_EXPORTER_OTLP_*`` settings (endpoint,
headers, certificates, timeout), the sampler comes from ``OTEL_TRACES_SAMPLER`` (default:
parent-based, always on) and the batch processor's limits from ``OTEL_BSP_*``.

OpenTelemetry is imported only when tracing is on, so that a process without it pays nothing
(and an edge sidecar installed without it runs, as long as tracing stays off).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

EXPORTERS: Final = ("otlp", "console", "none")
PROTOCOLS: Final = ("grpc", "http/protobuf")


class TracingConfigError(ValueError):
    """An ``OTEL_*`` setting is malformed, or OpenTelemetry is missing; names the variable."""


def requested(env: Mapping[str, str]) -> str | None:
    """The exporter ``env`` asks for (``otlp`` or ``console``), or None: tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    raw = env.get("OTEL_TRACES_EXPORTER", "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    if len(names) > 1 or names[0] not in EXPORTERS:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {raw!r}")
    return names[0]


def exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    """The span exporter ``env`` asks for, or None (tracing off)."""
    name = requested(env)
    if name is None:
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if name == "otlp" and protocol not in PROTOCOLS:
        variable = (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
            if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            else "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        raise TracingConfigError(f"{variable} must be grpc or http/protobuf, got {protocol!r}")
    try:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    except ImportError as exc:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={name}: OpenTelemetry is not installed ({exc.name}); "
            "install opentelemetry-sdk and opentelemetry-exporter-otlp"
        ) from None


def provider_from_env(env: Mapping[str, str], service_name: str) -> TracerProvider | None:
    """A tracer provider exporting in batches as ``env`` asks, or None (tracing off)."""
    exporter = exporter_from_env(env)
    if exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over our default name.
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": service_name})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
