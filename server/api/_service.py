"""The ForwarderService servicer: request validation, then the store and the key vault."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final, Protocol

import grpc
import structlog
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc

from server import _tracing as tracing
from server._errors import (
    ApiError,
    Reason,
    Violation,
    abort,
    invalid_argument,
    key_rejected,
    key_scope_missing,
    not_found,
    store_unavailable,
    vault_unavailable,
)
from server._metrics import INTAKE
from server._secret import PrivateKey
from server.api import _admin_requests as admin
from server.api import _audit as audit
from server.api._audit import AuditLog
from server.api._convert import (
    CLICK_DISPOSITION,
    CONVERSION_DISPOSITION,
    KEY_CHECK_VERDICT,
    audit_event_message,
    failed_event_message,
    integration_message,
    stream_clicks_response,
)
from server.delivery._klaviyo import KeyCheck, KeyVerdict, KlaviyoClient
from server.delivery._payloads import build_test_event
from server.intake._batch import BatchOutcome, validate_batch
from server.intake._coalescer import Coalescer
from server.intake._validation import validate_click, validate_conversion
from server.intake._workers import IntakeWorkers
from server.store import Store, StoreError
from server.store._records import (
    ClickOutcome,
    ConversionOutcome,
    IntegrationRecord,
    IntegrationState,
    NewClick,
)
from server.vault import KeyDestroyed, KeyVault, VaultDenied, VaultUnavailable

_log = structlog.get_logger(__name__)
# How long a ForwardClick commit waits for more calls when calls are arriving concurrently
# (see _coalescer): a few times a commit's own duration here, far below a call's deadline.
CLICK_COMMIT_LINGER_S: Final = 0.002

MAX_BATCH: Final = 1000
# Batches of one stream whose commits may be in flight at once; acks still go out in order.
STREAM_PIPELINE_DEPTH: Final = 8

Context = grpc.aio.ServicerContext[Any, Any]


@functools.lru_cache(maxsize=16)
def _intake_counter(kind: str, disposition: str) -> Any:
    # prometheus_client's labels() validates and locks on every call: once per pair is enough.
    return INTAKE.labels(kind, disposition)


class DeliveryWakeup(Protocol):
    """Told when events were queued, so delivery starts without waiting for a poll."""

    def notify(self) -> None:
        """Events became due."""


_INTERNAL: Final = ApiError(
    grpc.StatusCode.INTERNAL, "internal error; see the server log", Reason.INTERNAL
)


def _handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`ApiError` (and vault failures) into rich statuses for unary RPCs."""

    @functools.wraps(fn)
    async def wrapper(self: ForwarderService, request: Any, context: Context) -> Any:
        try:
            return await fn(self, request, context)
        except ApiError as error:
            await abort(context, error)
        except VaultUnavailable:
            await abort(context, vault_unavailable())
        except StoreError as exc:
            _log.error("store unavailable", error=str(exc))
            await abort(context, store_unavailable())
        except VaultDenied:
            await abort(
                context,
                ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the key vault denied the forwarder's request; check its policy",
                    Reason.VAULT_DENIED,
                ),
            )
        except Exception:
            # A bug. grpc would answer UNKNOWN with the exception's text; callers get a fixed
            # message instead (exception text is not vetted for secrets), the log the details.
            _log.exception("unexpected error")
            await abort(context, _INTERNAL)

    return wrapper


class ForwarderService(pb_grpc.ForwarderServiceServicer):
    """Implements elido.forwarder.v1.ForwarderService."""

    def __init__(
        self,
        store: Store,
        vault: KeyVault,
        wakeup: DeliveryWakeup,
        workers: IntakeWorkers | None = None,
        audit: AuditLog | None = None,
        *,
        klaviyo: KlaviyoClient,
    ) -> None:
        self._store = store
        # Every admin action that changes something is recorded (see _audit).
        self._audit = audit or AuditLog(store, None)
        # Asked about keys (RegisterIntegration, VerifyIntegrationKey); delivery has its own.
        self._klaviyo = klaviyo
        # StreamClicks batches go to worker processes when there are any (see _workers).
        self._workers = workers
        self._vault = vault
        self._wakeup = wakeup
        # Concurrent ForwardClick calls share commits on the store thread. (Through the intake
        # workers they measured no faster: a unary call's cost is gRPC's, in this process.)
        # Under load a commit lingers briefly so that more calls share its fsync.
        self._clicks: Coalescer[NewClick, ClickOutcome] = Coalescer(
            self._take_clicks, linger_s=CLICK_COMMIT_LINGER_S
        )
        # Per workspace: the registration lock and how many registrations hold or await it.
        self._registering: dict[str, tuple[asyncio.Lock, int]] = {}

    # -- integrations ------------------------------------------------------------------
    async def _integration(self, workspace_id: str) -> pb.Integration:
        record = await self._store.get_integration(workspace_id)
        if record is None:
            raise not_found(workspace_id)
        return integration_message(record, await self._store.delivery_counters(workspace_id))

    @_handles_errors
    async def RegisterIntegration(
        self, request: pb.RegisterIntegrationRequest, context: Context
    ) -> pb.RegisterIntegrationResponse:
        async with self._audit.action(context, audit.REGISTER, request.workspace_id) as details:
            response = await self._register(request, details)
            details["replaced"] = response.replaced
            details["key_version"] = response.integration.key_version
            return response

    async def _register(
        self, request: pb.RegisterIntegrationRequest, details: dict[str, Any]
    ) -> pb.RegisterIntegrationResponse:
        settings = admin.validate_register(request)
        key = PrivateKey(request.private_key)
        details["key_fingerprint"] = key.fingerprint  # never the key
        ws = request.workspace_id
        # Before anything is stored (Vault's transit key included): a wrong key goes no further.
        # Not through the account's rate limiter: that belongs to whichever replica delivers
        # the account (none yet for a new one), and a registration must answer in seconds. At
        # worst the probe costs that account one 429, which delivery retries; a 429 to the
        # probe itself is only inconclusive.
        check = await self._klaviyo.probe_key(key)
        self._log_check("registration", ws, key, check)
        details["key_check"] = str(check.verdict)
        if check.verdict is KeyVerdict.UNKNOWN_KEY:
            raise key_rejected(check.status_code)
        if check.verdict is KeyVerdict.SCOPE_MISSING:
            raise key_scope_missing(check.status_code)
        if check.verdict is KeyVerdict.VALID:
            state, state_reason = IntegrationState.ACTIVE, ""
        else:
            state = IntegrationState.UNVERIFIED
            state_reason = (
                f"Klaviyo could not confirm the key at registration ({check.detail}); "
                "the first delivery settles it"
            )
        # One registration of a workspace at a time in this process: a failed one may delete
        # the transit key it created, which a concurrent one must not be using.
        lock, users = self._registering.get(ws, (asyncio.Lock(), 0))
        self._registering[ws] = (lock, users + 1)
        try:
            async with lock:
                existed = await self._store.get_integration(ws) is not None
                encrypted = await self._vault.encrypt(ws, key)
                try:
                    record, replaced = await self._store.upsert_integration(
                        ws,
                        encrypted.ciphertext,
                        key.fingerprint,
                        encrypted.key_version,
                        key.account,
                        settings,
                        time.time(),
                        state=state,
                        state_reason=state_reason,
                    )
                except StoreError:
                    # Nothing was committed (a cancelled call is left alone: its commit
                    # may still land, and then the key is in use).
                    if not existed:
                        await self._discard_new_key(ws)
                    raise
        finally:
            lock, users = self._registering[ws]
            if users == 1:
                del self._registering[ws]
            else:
                self._registering[ws] = (lock, users - 1)
        self._vault.forget(request.workspace_id)
        self._wakeup.notify()
        _log.info(
            "integration registered",
            workspace_id=request.workspace_id,
            key_fingerprint=key.fingerprint,
            replaced=replaced,
            state=str(record.state),
        )
        counters = await self._store.delivery_counters(request.workspace_id)
        return pb.RegisterIntegrationResponse(
            integration=integration_message(record, counters), replaced=replaced
        )

    @staticmethod
    def _log_check(when: str, workspace_id: str, key: PrivateKey, check: KeyCheck) -> None:
        _log.info(
            "key checked",
            at=when,
            workspace_id=workspace_id,
            key_fingerprint=key.fingerprint,
            verdict=str(check.verdict),
            status=check.status_code,
            detail=check.detail,
        )

    @_handles_errors
    async def VerifyIntegrationKey(
        self, request: pb.VerifyIntegrationKeyRequest, context: Context
    ) -> pb.VerifyIntegrationKeyResponse:
        async with self._audit.action(context, audit.KEY_RECHECK, request.workspace_id) as details:
            response = await self._verify(request)
            details["verdict"] = pb.KeyCheckVerdict.Name(response.verdict)
            details["state"] = pb.IntegrationState.Name(response.integration.state)
            details["key_fingerprint"] = response.integration.key_fingerprint
            if response.HasField("test_event"):
                # The event's id, not the profile it went to: no identifier in the audit log.
                details["test_event_unique_id"] = response.test_event.unique_id
                details["test_event_accepted"] = response.test_event.accepted
            return response

    async def _verify(
        self, request: pb.VerifyIntegrationKeyRequest
    ) -> pb.VerifyIntegrationKeyResponse:
        ws = request.workspace_id
        admin.require_workspace_id(ws)
        record = await self._store.get_integration(ws)
        if record is None:
            raise not_found(ws)
        profile = admin.test_event_profile(request, record.settings.default_phone_region)
        try:
            key = await self._vault.decrypt(ws, record.ciphertext)
        except KeyDestroyed:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the stored key can no longer be decrypted (transit key destroyed); "
                "register a new key",
                Reason.KEY_REJECTED,
            ) from None
        check = await self._klaviyo.probe_key(key)
        self._log_check("verify", ws, key, check)
        await self._settle(record, check)
        response = pb.VerifyIntegrationKeyResponse(
            verdict=KEY_CHECK_VERDICT[check.verdict], detail=check.detail
        )
        if profile is not None and check.verdict is KeyVerdict.VALID:
            # New per test: Klaviyo keeps the first event per profile, metric and unique_id.
            unique_id = f"elido-test-{uuid.uuid4().hex}"
            result = await self._klaviyo.create_event(
                key, build_test_event(profile, unique_id, time.time())
            )
            response.test_event.CopyFrom(
                pb.TestEvent(
                    unique_id=unique_id,
                    accepted=result.ok,
                    detail="" if result.ok else f"{result.outcome.value}: {result.detail}",
                )
            )
            _log.info("test event sent", workspace_id=ws, unique_id=unique_id, accepted=result.ok)
        response.integration.CopyFrom(await self._integration(ws))
        return response

    async def _settle(self, record: IntegrationRecord, check: KeyCheck) -> None:
        """Set the integration's state from a key check (an inconclusive one changes nothing)."""
        if check.verdict is KeyVerdict.VALID:
            state, reason = IntegrationState.ACTIVE, ""
        elif check.verdict is KeyVerdict.UNKNOWN_KEY:
            state = IntegrationState.KEY_REJECTED
            reason = f"key check: Klaviyo answered {check.status_code}: {check.detail}"
        elif check.verdict is KeyVerdict.SCOPE_MISSING:
            state = IntegrationState.KEY_REJECTED
            reason = (
                f"key check: the key lacks the events:write scope "
                f"(Klaviyo answered {check.status_code}: {check.detail})"
            )
        else:
            return
        if state is record.state and reason == record.state_reason:
            return
        # Compare-and-set on the ciphertext: a key registered meanwhile is left alone.
        if await self._store.set_key_state(
            record.workspace_id, record.ciphertext, state, reason, time.time()
        ):
            if state.delivers:
                self._wakeup.notify()
            else:
                self._vault.forget(record.workspace_id)

    async def _discard_new_key(self, workspace_id: str) -> None:
        """Delete the transit key a failed first registration created: nothing stays behind.

        Only when no integration uses it (checked again: the store may have come back);
        when the store cannot say, the key goes anyway — no stored ciphertext can need it,
        as the first registration never committed.
        """
        try:
            if await self._store.get_integration(workspace_id) is not None:
                return
        except StoreError:
            pass
        try:
            await self._vault.destroy(workspace_id)
        except Exception as exc:
            # The registration still fails with its own error; the key is left for the
            # next registration (which reuses it) or RemoveIntegration (which deletes it).
            _log.warning(
                "transit key of a failed registration not deleted",
                workspace_id=workspace_id,
                error=type(exc).__name__,
            )
            return
        _log.info("transit key of a failed registration deleted", workspace_id=workspace_id)

    @_handles_errors
    async def RemoveIntegration(
        self, request: pb.RemoveIntegrationRequest, context: Context
    ) -> pb.RemoveIntegrationResponse:
        async with self._audit.action(context, audit.REMOVE, request.workspace_id) as details:
            admin.require_workspace_id(request.workspace_id)
            record = await self._store.get_integration(request.workspace_id)
            if record is None:
                raise not_found(request.workspace_id)
            details["key_fingerprint"] = record.key_fingerprint
            # Shred first: if Vault is down nothing changes and the caller retries; the other
            # order could leave a deleted integration whose key still decrypts from a backup.
            await self._vault.destroy(request.workspace_id)
            dropped = await self._store.delete_integration(request.workspace_id)
            if dropped is None:
                raise not_found(request.workspace_id)
            details["dropped_event_count"] = dropped
        _log.info("integration removed", workspace_id=request.workspace_id, dropped_events=dropped)
        return pb.RemoveIntegrationResponse(dropped_event_count=dropped)

    @_handles_errors
    async def GetIntegration(
        self, request: pb.GetIntegrationRequest, context: Context
    ) -> pb.GetIntegrationResponse:
        admin.require_workspace_id(request.workspace_id)
        return pb.GetIntegrationResponse(integration=await self._integration(request.workspace_id))

    @_handles_errors
    async def ListIntegrations(
        self, request: pb.ListIntegrationsRequest, context: Context
    ) -> pb.ListIntegrationsResponse:
        size = admin.page_size(request.page_size)
        after = admin.decode_page_token(request.page_token)
        records = await self._store.list_integrations(after, size + 1)
        page = records[:size]
        response = pb.ListIntegrationsResponse()
        for record in page:
            counters = await self._store.delivery_counters(record.workspace_id)
            response.integrations.append(integration_message(record, counters))
        if len(records) > size:
            response.next_page_token = admin.encode_page_token(page[-1].workspace_id)
        return response

    @_handles_errors
    async def RewrapKeys(
        self, request: pb.RewrapKeysRequest, context: Context
    ) -> pb.RewrapKeysResponse:
        async with self._audit.action(context, audit.REWRAP, request.workspace_id) as details:
            details["scope"] = "workspace" if request.workspace_id else "all"
            response = await self._rewrap(request)
            details["rewrapped_count"] = response.rewrapped_count
            details["unchanged_count"] = response.unchanged_count
            return response

    async def _rewrap(self, request: pb.RewrapKeysRequest) -> pb.RewrapKeysResponse:
        if request.workspace_id:
            admin.require_workspace_id(request.workspace_id)
            record = await self._store.get_integration(request.workspace_id)
            if record is None:
                raise not_found(request.workspace_id)
            records = [record]
        else:
            records, after = [], ""
            while page := await self._store.list_integrations(after, 500):
                records.extend(page)
                after = page[-1].workspace_id
        rewrapped = unchanged = 0
        for record in records:
            try:
                new = await self._vault.rewrap(record.workspace_id, record.ciphertext)
            except KeyDestroyed:
                _log.warning("rewrap skipped: transit key gone", workspace_id=record.workspace_id)
                continue
            if new.key_version > record.key_version and await self._store.replace_ciphertext(
                record.workspace_id, record.ciphertext, new.ciphertext, new.key_version, time.time()
            ):
                rewrapped += 1
            else:
                unchanged += 1
        _log.info("keys rewrapped", rewrapped=rewrapped, unchanged=unchanged)
        return pb.RewrapKeysResponse(rewrapped_count=rewrapped, unchanged_count=unchanged)

    # -- intake --------------------------------------------------------------------------
    @_handles_errors
    async def ForwardClick(
        self, request: pb.ForwardClickRequest, context: Context
    ) -> pb.ForwardClickResponse:
        if not request.HasField("click"):
            raise invalid_argument([Violation("click", "required")])
        # Settings of a workspace registered through another replica are read first.
        await self._store.load_settings((request.click.workspace_id,))
        click = validate_click(request.click, "click", self._store.settings_for)
        if isinstance(click, list):
            raise invalid_argument(click, "click")
        outcome = await self._clicks.take(click)
        tracing.remember(request.click.click_id)
        _intake_counter("click", outcome.value).inc()
        if outcome is ClickOutcome.QUEUED:
            self._wakeup.notify()
        return pb.ForwardClickResponse(disposition=CLICK_DISPOSITION[outcome])

    async def _take_clicks(self, clicks: Sequence[NewClick]) -> list[ClickOutcome]:
        return await self._store.take_clicks(clicks, time.time())

    def _start_batch(
        self, request: pb.StreamClicksRequest, previous_id: int, lane: int, order: asyncio.Lock
    ) -> asyncio.Future[BatchOutcome]:
        problems: list[Violation] = []
        if request.batch_id == 0:
            problems.append(Violation("batch_id", "required (nonzero)"))
        elif request.batch_id <= previous_id:
            problems.append(
                Violation("batch_id", f"must increase within a stream (previous {previous_id})")
            )
        if not request.clicks:
            problems.append(Violation("clicks", "a batch needs at least one click"))
        elif len(request.clicks) > MAX_BATCH:
            problems.append(Violation("clicks", f"at most {MAX_BATCH} clicks per batch"))
        if problems:
            raise invalid_argument(problems, "batch")
        if self._workers is not None:
            return asyncio.ensure_future(self._workers.take(request, time.time(), lane))
        return asyncio.ensure_future(self._take_batch(request, time.time(), order))

    async def _take_batch(
        self, request: pb.StreamClicksRequest, now: float, order: asyncio.Lock
    ) -> BatchOutcome:
        await self._store.load_settings({click.workspace_id for click in request.clicks})
        batch = validate_batch(request, self._store.settings_for, now)
        # A stream's batches commit in the order sent (the lock is fair): of two clicks with
        # one id, the first sent is the one queued, on any backend.
        async with order:
            outcomes = await self._store.take_clicks(batch.valid, now) if batch.valid else []
        return batch.finish(outcomes)

    async def _finish_batch(
        self, request: pb.StreamClicksRequest, taken: asyncio.Future[BatchOutcome]
    ) -> pb.StreamClicksResponse:
        result = await taken
        tally = result.tally()
        if tally.get(ClickOutcome.QUEUED.value):
            self._wakeup.notify()
        for disposition, n in tally.items():
            _intake_counter("click", disposition).inc(n)
        return stream_clicks_response(request, result)

    async def StreamClicks(
        self, request_iterator: AsyncIterator[pb.StreamClicksRequest], context: Context
    ) -> AsyncIterator[pb.StreamClicksResponse]:
        pending: asyncio.Queue[
            tuple[pb.StreamClicksRequest, asyncio.Future[BatchOutcome]] | ApiError | None
        ] = asyncio.Queue(STREAM_PIPELINE_DEPTH)

        lane = self._workers.lane() if self._workers is not None else 0
        order = asyncio.Lock()

        async def read() -> None:
            previous = 0
            try:
                async for request in request_iterator:
                    batch = self._start_batch(request, previous, lane, order)
                    tracing.trace_batch(
                        request.batch_id,
                        (click.click_id for click in request.clicks),
                        request.trace_context,
                        batch,
                    )
                    previous = request.batch_id
                    await pending.put((request, batch))
            except ApiError as error:
                await pending.put(error)
                return
            except Exception:
                # Never leave the writer waiting on a reader that died (see _handles_errors).
                _log.exception("unexpected error reading the stream")
                await pending.put(_INTERNAL)
                return
            await pending.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, ApiError):
                    await abort(context, item)
                try:
                    response = await self._finish_batch(*item)
                except StoreError as exc:
                    # Not acked: the sender keeps the batch and resends it (ids are idempotent).
                    _log.error("store unavailable", error=str(exc))
                    await abort(context, store_unavailable())
                yield response
        finally:
            reader.cancel()

    @_handles_errors
    async def ForwardConversion(
        self, request: pb.ForwardConversionRequest, context: Context
    ) -> pb.ForwardConversionResponse:
        if not request.HasField("conversion"):
            raise invalid_argument([Violation("conversion", "required")])
        await self._store.load_settings((request.conversion.workspace_id,))
        conversion = validate_conversion(
            request.conversion, "conversion", settings_for=self._store.settings_for
        )
        if isinstance(conversion, list):
            raise invalid_argument(conversion, "conversion")
        outcome = await self._store.take_conversion(conversion, time.time())
        tracing.remember(request.conversion.conversion_id)
        _intake_counter("conversion", outcome.value).inc()
        if outcome is ConversionOutcome.QUEUED:
            self._wakeup.notify()
        return pb.ForwardConversionResponse(disposition=CONVERSION_DISPOSITION[outcome])

    # -- failed events -------------------------------------------------------------------
    @_handles_errors
    async def ListFailedEvents(
        self, request: pb.ListFailedEventsRequest, context: Context
    ) -> pb.ListFailedEventsResponse:
        admin.require_workspace_id(request.workspace_id)
        size = admin.page_size(request.page_size)
        cursor = admin.decode_page_token(request.page_token)
        if cursor and not cursor.isdigit():
            raise invalid_argument(
                [Violation("page_token", "is not a token from a previous response")]
            )
        if await self._store.get_integration(request.workspace_id) is None:
            raise not_found(request.workspace_id)
        records = await self._store.list_failed(request.workspace_id, int(cursor or 0), size + 1)
        response = pb.ListFailedEventsResponse(
            failed_events=[failed_event_message(r) for r in records[:size]]
        )
        if len(records) > size:
            response.next_page_token = admin.encode_page_token(str(records[size - 1].event_id))
        return response

    @_handles_errors
    async def ReplayFailedEvents(
        self, request: pb.ReplayFailedEventsRequest, context: Context
    ) -> pb.ReplayFailedEventsResponse:
        async with self._audit.action(context, audit.REPLAY, request.workspace_id) as details:
            details["dry_run"] = request.dry_run
            ids, selection = admin.replay_selection(request)
            details.update(_selection_details(request, ids))
            if await self._store.get_integration(request.workspace_id) is None:
                raise not_found(request.workspace_id)
            replayed = await self._store.replay_failed(
                request.workspace_id, ids, time.time(), selection=selection, dry_run=request.dry_run
            )
            details["replayed_count"] = replayed
        if replayed and not request.dry_run:
            self._wakeup.notify()
        _log.info(
            "failed events replayed",
            workspace_id=request.workspace_id,
            count=replayed,
            dry_run=request.dry_run,
        )
        return pb.ReplayFailedEventsResponse(replayed_count=replayed, dry_run=request.dry_run)

    # -- erasure -------------------------------------------------------------------------
    @_handles_errors
    async def ErasePersonalData(
        self, request: pb.ErasePersonalDataRequest, context: Context
    ) -> pb.ErasePersonalDataResponse:
        # No NOT_FOUND for a workspace without an integration: its click index outlives a
        # removed integration, and an erasure must reach it. The log names counts only.
        async with self._audit.action(context, audit.ERASE, request.workspace_id) as details:
            details["all_workspaces"] = request.all_workspaces
            details["identifier_counts"] = {
                "emails": len(request.emails),
                "phone_numbers": len(request.phone_numbers),
                "external_ids": len(request.external_ids),
                "kxs": len(request.kxs),
            }
            workspace_id, targets = admin.erasure_targets(request)
            hashes = self._audit.identifier_hashes(targets)
            if hashes is not None:
                details["identifier_hashes"] = hashes
            counts = await self._store.erase_identifiers(workspace_id, targets)
            details["erased_click_count"] = counts.clicks
            details["erased_queued_count"] = counts.queued_events
            details["erased_failed_count"] = counts.failed_events
        _log.info(
            "personal data erased",
            workspace_id=workspace_id or "*",
            identifiers=len(targets.emails)
            + len(targets.phone_numbers)
            + len(targets.external_ids)
            + len(targets.kxs),
            clicks=counts.clicks,
            queued_events=counts.queued_events,
            failed_events=counts.failed_events,
        )
        return pb.ErasePersonalDataResponse(
            erased_click_count=counts.clicks,
            erased_queued_count=counts.queued_events,
            erased_failed_count=counts.failed_events,
        )

    # -- audit trail ---------------------------------------------------------------------
    @_handles_errors
    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        query = admin.audit_query(request)
        records = await self._store.list_audit(
            query.workspace_id, query.since, query.until, query.before_id, query.page_size + 1
        )
        page = records[: query.page_size]
        response = pb.ListAuditEventsResponse(audit_events=[audit_event_message(r) for r in page])
        if len(records) > query.page_size:
            response.next_page_token = query.token(page[-1].audit_id)
        return response


def _selection_details(
    request: pb.ReplayFailedEventsRequest, ids: list[int] | None
) -> dict[str, Any]:
    """A replay's selection as the audit trail records it."""
    out: dict[str, Any] = {"all": request.all}
    if ids is not None:
        out["event_ids"] = [str(i) for i in ids]
    if request.HasField("failed_after"):
        out["failed_after"] = request.failed_after.ToJsonString()
    if request.HasField("failed_before"):
        out["failed_before"] = request.failed_before.ToJsonString()
    if request.error_contains:
        out["error_contains"] = request.error_contains
    if request.kind:
        out["kind"] = pb.EventKind.Name(request.kind)
    return out
