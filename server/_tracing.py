"""OpenTelemetry tracing of the forwarder: off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

What is traced, and how the edge's trace reaches Klaviyo:

- Every RPC (but health checks and reflection) gets a server span from
  ``opentelemetry-instrumentation-grpc``'s grpc.aio interceptor, a child of the caller's W3C
  ``traceparent`` metadata.
- A ``StreamClicks`` stream lives for hours and carries batches of many traces, so each batch
  brings its own context in ``StreamClicksRequest.trace_context``; a batch that has one gets a
  CONSUMER span, its child, lasting until the batch is committed (or fails).
- Intake remembers, per click and conversion id, the span it came in with (a bounded map in
  this process). Each Klaviyo request is a CLIENT span: the child of that span when all its
  events came in under one, else a new trace with links to each of them (a bulk job mixes
  clicks of many traces). Events taken in by another replica, or before a restart, have no
  remembered span: their Klaviyo spans start new traces.

Switched on by the standard ``OTEL_*`` variables (``elido_common.tracing``). Nothing here imports
OpenTelemetry until tracing is on, and the hooks cost one check of a module variable when it is
off. The spans made here carry no keys, emails or click ids in attributes.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from elido_common.tracing import TracingConfigError, provider_from_env

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext, Tracer

__all__ = [
    "TracingConfigError",
    "configure",
    "install",
    "klaviyo_request",
    "remember",
    "server_interceptors",
    "shutdown",
    "trace_batch",
]
DEFAULT_SERVICE_NAME: Final = "elido-forwarder"
# Intake-to-delivery contexts kept; older ones are forgotten (their deliveries start traces).
REMEMBERED_CONTEXTS: Final = 65_536
# OpenTelemetry's default span link limit.
MAX_LINKS: Final = 128


class _Result(Protocol):
    """What a Klaviyo request's result tells a span (``KlaviyoResult``)."""

    @property
    def outcome(self) -> str: ...

    @property
    def status_code(self) -> int | None: ...


R = TypeVar("R", bound=_Result)

_provider: TracerProvider | None = None
# Whether configure() built the provider (then shutdown() stops it) or a caller installed it.
_owned = False
_tracer: Tracer | None = None
_contexts: collections.OrderedDict[str, SpanContext] = collections.OrderedDict()


def enabled() -> bool:
    """True once a tracer provider is installed."""
    return _tracer is not None


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Switches tracing on if ``env`` (default: the process's) asks for it; True if on.

    Does nothing when a provider is already installed (a test's :func:`install`). Raises
    :class:`TracingConfigError` for a malformed ``OTEL_*`` setting.
    """
    global _owned
    if _tracer is not None:
        return True
    provider = provider_from_env(os.environ if env is None else env, DEFAULT_SERVICE_NAME)
    if provider is None:
        return False
    install(provider)
    _owned = True
    return True


def install(provider: TracerProvider) -> None:
    """Traces into ``provider`` (tests pass one with an in-memory exporter)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("elido.forwarder")


def shutdown() -> None:
    """Flushes and stops the exporter this module set up; tracing is off afterwards."""
    global _provider, _tracer, _owned
    provider, owned = _provider, _owned
    _provider, _tracer, _owned = None, None, False
    _contexts.clear()
    if provider is not None and owned:
        provider.shutdown()


def server_interceptors() -> list[Any]:
    """The gRPC server interceptors that trace RPCs (none while tracing is off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    # Probes and grpcurl's reflection would drown the RPCs that matter.
    quiet = filters.any_of(
        filters.health_check(),
        filters.service_prefix("grpc.reflection."),
    )
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]  # untyped upstream
        tracer_provider=_provider, filter_=filters.negate(quiet)
    )
    return [interceptor]


def _remember(ids: Iterable[str], context: SpanContext) -> None:
    for event_id in ids:
        if event_id:
            _contexts[event_id] = context
            _contexts.move_to_end(event_id)
    while len(_contexts) > REMEMBERED_CONTEXTS:
        _contexts.popitem(last=False)


def remember(*ids: str) -> None:
    """Ties events taken in by the current RPC to its span, for their Klaviyo requests."""
    if _tracer is None:
        return
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        _remember(ids, context)


def trace_batch(
    batch_id: int, clicks: Iterable[str], carrier: Mapping[str, str], done: asyncio.Future[Any]
) -> None:
    """A span for one ``StreamClicks`` batch, from its receipt until ``done`` completes."""
    if _tracer is None or "traceparent" not in carrier:
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(dict(carrier))
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return  # a malformed traceparent: no trace to join
    ids = list(clicks)
    span = _tracer.start_span(
        "StreamClicks batch",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={"elido.batch.id": batch_id, "elido.batch.clicks": len(ids)},
    )
    if span.get_span_context().trace_flags.sampled:
        _remember(ids, span.get_span_context())

    def finish(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            span.set_status(trace.StatusCode.ERROR, "cancelled")
        elif (error := future.exception()) is not None:
            span.set_status(trace.StatusCode.ERROR, type(error).__name__)
        span.end()

    done.add_done_callback(finish)


def _event_ids(body: Mapping[str, Any] | None) -> list[str]:
    """The ``unique_id`` (click or conversion id) of every event in a Create Event or bulk body."""
    if body is None:
        return []
    data = body.get("data") or {}
    attributes = data.get("attributes") or {}
    if data.get("type") == "event":
        return [attributes.get("unique_id", "")]
    ids: list[str] = []
    for group in (attributes.get("events-bulk-create") or {}).get("data") or ():
        for entry in ((group.get("attributes") or {}).get("events") or {}).get("data") or ():
            ids.append((entry.get("attributes") or {}).get("unique_id", ""))
    return ids


async def klaviyo_request(
    method: str, path: str, body: Mapping[str, Any] | None, send: Awaitable[R]
) -> R:
    """Awaits ``send`` (one request to Klaviyo) inside a CLIENT span that records its outcome."""
    if _tracer is None:
        return await send
    from opentelemetry import trace

    ids = _event_ids(body)
    contexts: dict[tuple[int, int], SpanContext] = {}
    for event_id in ids:
        found = _contexts.get(event_id)
        if found is not None:
            contexts.setdefault((found.trace_id, found.span_id), found)
    parent = None
    links: list[trace.Link] = []
    if len(contexts) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(next(iter(contexts.values()))))
    else:
        # A new trace of its own (not a child of the delivery loop's context, if any).
        parent = trace.set_span_in_context(trace.INVALID_SPAN)
        links = [trace.Link(c) for c in list(contexts.values())[:MAX_LINKS]]
    with _tracer.start_as_current_span(
        f"{method} {path}",
        context=parent,
        kind=trace.SpanKind.CLIENT,
        links=links,
        attributes={
            "http.request.method": method,
            "url.path": path,
            "elido.klaviyo.events": len(ids),
        },
        record_exception=False,
    ) as span:
        result = await send
        if result.status_code is not None:
            span.set_attribute("http.response.status_code", result.status_code)
        span.set_attribute("elido.klaviyo.outcome", str(result.outcome))
        if str(result.outcome) != "accepted":
            span.set_status(trace.StatusCode.ERROR, str(result.outcome))
        return result
