"""OpenTelemetry tracing of the sidecar: off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

How a click's trace travels (docs/sidecar.md, "Tracing"):

- A ``POST /v1/clicks`` gets a SERVER span, the child of the proxy's W3C ``traceparent``
  header when it sends one. The spool records which records (by sequence number) each traced
  request appended; nothing about traces is written to disk.
- A batch read from the spool mixes records of many requests (and of the access log, which
  carries no trace context). Each batch sent on ``StreamClicks`` gets a PRODUCER span, from
  its send until its ack: the child of the request span when all its traced records came from
  one request, else a new trace linked to every request span it carries. Its context goes to
  the forwarder in the batch's ``trace_context`` field, where the forwarder's spans for the
  batch, and then for the Klaviyo requests of its clicks, continue the trace.

OpenTelemetry is imported only when tracing is on (the sidecar's memory budget), and each hook
is one check of a module variable when it is off.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from elido_common.tracing import TracingConfigError, provider_from_env

from ._config import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

DEFAULT_SERVICE_NAME: Final = "elido-sidecar"
# Traced requests whose records are not acked yet; past this the oldest are forgotten.
MAX_PENDING_REQUESTS: Final = 10_000
# OpenTelemetry's default span link limit.
MAX_LINKS: Final = 128

T = TypeVar("T", bound=tuple[Any, ...])


@dataclass(slots=True)
class _Appended:
    first_seq: int
    end_seq: int
    context: SpanContext


_provider: TracerProvider | None = None
_owned = False
_tracer: Tracer | None = None
_appended: collections.deque[_Appended] = collections.deque()
_batches: dict[int, tuple[Span, int]] = {}


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Switches tracing on if the environment asks for it; raises ConfigError if malformed."""
    global _owned
    if _tracer is not None:
        return True
    try:
        provider = provider_from_env(os.environ if env is None else env, DEFAULT_SERVICE_NAME)
    except TracingConfigError as exc:
        raise ConfigError(str(exc)) from None
    if provider is None:
        return False
    install(provider)
    _owned = True
    return True


def install(provider: TracerProvider) -> None:
    """Traces into ``provider`` (tests pass one with an in-memory exporter)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("elido.sidecar")


def shutdown() -> None:
    """Ends open batch spans, flushes the exporter this module set up; tracing is off after."""
    global _provider, _tracer, _owned
    batches_abandoned("shutdown")
    provider, owned = _provider, _owned
    _provider, _tracer, _owned = None, None, False
    _appended.clear()
    if provider is not None and owned:
        provider.shutdown()


async def http_request(headers: Mapping[str, str], handle: Awaitable[T]) -> T:
    """Awaits ``handle`` (a POST's ``(status, ...)``) inside a SERVER span."""
    if _tracer is None:
        return await handle
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(headers)  # header names are lower case
    with _tracer.start_as_current_span(
        "POST /v1/clicks",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/v1/clicks"},
    ) as span:
        result = await handle
        status = result[0]
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(trace.StatusCode.ERROR)
        return result


def spooled(first_seq: int, end_seq: int) -> None:
    """Records ``[first_seq, end_seq)`` as appended by the current span's request, if any."""
    if _tracer is None:
        return
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return
    _appended.append(_Appended(first_seq, end_seq, context))
    if len(_appended) > MAX_PENDING_REQUESTS:
        _appended.popleft()


def batch_sent(batch_id: int, first_seq: int, end_seq: int) -> bytes:
    """Starts the span of a batch of records ``[first_seq, end_seq)``.

    Returns the serialized ``StreamClicksRequest.trace_context`` field to append to the
    request (protobuf merges concatenated messages), or nothing when tracing is off.
    """
    if _tracer is None:
        return b""
    from elido.forwarder.v1 import forwarder_pb2
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    sources: dict[tuple[int, int], SpanContext] = {}
    for appended in _appended:
        if appended.first_seq < end_seq and appended.end_seq > first_seq:
            key = (appended.context.trace_id, appended.context.span_id)
            sources.setdefault(key, appended.context)
    links: list[trace.Link] = []
    if len(sources) == 1:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(next(iter(sources.values()))))
    else:
        parent = trace.set_span_in_context(trace.INVALID_SPAN)
        links = [trace.Link(c) for c in list(sources.values())[:MAX_LINKS]]
    span = _tracer.start_span(
        "StreamClicks batch",
        context=parent,
        kind=trace.SpanKind.PRODUCER,
        links=links,
        attributes={"elido.batch.id": batch_id, "elido.batch.clicks": end_seq - first_seq},
    )
    stale = _batches.pop(batch_id, None)
    if stale is not None:
        stale[0].end()
    _batches[batch_id] = (span, end_seq)
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
    return forwarder_pb2.StreamClicksRequest(trace_context=carrier).SerializeToString()


def batch_acked(batch_id: int) -> None:
    """Ends a batch's span: the forwarder committed it."""
    if _tracer is None:
        return
    entry = _batches.pop(batch_id, None)
    if entry is None:
        return
    span, end_seq = entry
    span.end()
    while _appended and _appended[0].end_seq <= end_seq:
        _appended.popleft()


def batches_abandoned(reason: str) -> None:
    """Ends the spans of unacked batches as failed (the stream broke; they will be re-sent)."""
    if not _batches:
        return
    from opentelemetry import trace

    for span, _ in _batches.values():
        span.set_status(trace.StatusCode.ERROR, reason)
        span.end()
    _batches.clear()
