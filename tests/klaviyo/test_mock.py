"""The Klaviyo mock enforces the contract: auth, headers, body, limits, windows, faults."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.klaviyo_mock import (
    EVENTS_WRITE,
    PROFILES_READ,
    Fault,
    FaultKind,
    KeySpec,
    KlaviyoMock,
    KlaviyoMockThread,
    MockConfig,
    WindowLimit,
)
from tests.support.klaviyo import TEST_KEY
from tests.support.klaviyo_spec import REPO_ROOT

HEADERS = {
    "Authorization": f"Klaviyo-API-Key {TEST_KEY}",
    "revision": "2026-07-15",
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


def event_body(unique_id: str = "u1", **attributes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"url": "https://shop.example/"},
                "metric": {
                    "data": {"type": "metric", "attributes": {"name": "Elido Link Clicked"}}
                },
                "profile": {
                    "data": {"type": "profile", "attributes": {"email": "ada@example.com"}}
                },
                "time": "2026-11-27T10:00:00+00:00",
                "unique_id": unique_id,
            },
        }
    }
    body["data"]["attributes"].update(attributes)
    return body


def bulk_body(*groups: tuple[str, list[str]], metric: str = "Elido Link Clicked") -> dict[str, Any]:
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {
                "events-bulk-create": {
                    "data": [
                        {
                            "type": "event-bulk-create",
                            "attributes": {
                                "profile": {
                                    "data": {"type": "profile", "attributes": {"email": email}}
                                },
                                "events": {
                                    "data": [
                                        {
                                            "type": "event",
                                            "attributes": {
                                                "properties": {},
                                                "unique_id": uid,
                                                "metric": {
                                                    "data": {
                                                        "type": "metric",
                                                        "attributes": {"name": metric},
                                                    }
                                                },
                                            },
                                        }
                                        for uid in ids
                                    ]
                                },
                            },
                        }
                        for email, ids in groups
                    ]
                }
            },
        }
    }


async def post(
    mock: KlaviyoMock,
    body: Any,
    path: str = "/api/events",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(base_url=mock.base_url, timeout=5) as http:
        return await http.post(path, content=content, headers=headers or HEADERS, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"].startswith("application/vnd.api+json")
    errors = response.json()["errors"]
    assert len(errors) == 1
    error: dict[str, Any] = errors[0]
    assert {"id", "status", "code", "title", "detail"} <= set(error)
    return error


async def test_accepts_a_valid_event_and_records_it_with_headers(klaviyo_mock: KlaviyoMock) -> None:
    response = await post(klaviyo_mock, event_body())
    assert response.status_code == 202
    assert response.content == b""
    [event] = klaviyo_mock.timeline("acct")
    assert (event.metric, event.unique_id, event.profile) == (
        "Elido Link Clicked",
        "u1",
        {"email": "ada@example.com"},
    )
    [request] = klaviyo_mock.requests
    assert request.header("revision") == "2026-07-15"
    assert request.json == event_body()


@pytest.mark.parametrize(
    "authorization", [None, "Klaviyo-API-Key pk_unknownunknownunknown1", f"Bearer {TEST_KEY}"]
)
async def test_unknown_or_missing_key_is_401(
    klaviyo_mock: KlaviyoMock, authorization: str | None
) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    if authorization:
        headers["Authorization"] = authorization
    response = await post(klaviyo_mock, event_body(), headers=headers)
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert klaviyo_mock.timeline("acct") == []


async def test_key_without_events_write_is_403(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.add_key("pk_readonlyreadonlyreadonly", "acct", scopes={PROFILES_READ})
    headers = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_readonlyreadonlyreadonly"}
    response = await post(klaviyo_mock, event_body(), headers=headers)
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"


async def test_get_profiles_tells_wrong_key_from_valid_key(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.add_key("pk_readerreaderreaderreader", "acct", scopes={PROFILES_READ})
    async with httpx.AsyncClient(base_url=klaviyo_mock.base_url) as http:
        answers = [
            (
                await http.get(
                    "/api/profiles", headers={**HEADERS, "Authorization": f"Klaviyo-API-Key {key}"}
                )
            ).status_code
            for key in ("pk_wrongwrongwrongwrongwrong", TEST_KEY, "pk_readerreaderreaderreader")
        ]
    assert answers == [401, 403, 200]


@pytest.mark.parametrize(
    ("revision", "expected"), [(None, 400), ("july", 400), ("2026-07-15.pre", 202)]
)
async def test_revision_header_is_required_and_well_formed(
    klaviyo_mock: KlaviyoMock, revision: str | None, expected: int
) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "revision"}
    if revision:
        headers["revision"] = revision
    response = await post(klaviyo_mock, event_body(), headers=headers)
    assert response.status_code == expected
    if expected == 400:
        assert error_of(response)["source"] == {"parameter": "revision"}


async def test_wrong_content_type_is_415_and_wrong_accept_406(klaviyo_mock: KlaviyoMock) -> None:
    as_json = await post(
        klaviyo_mock, event_body(), headers={**HEADERS, "Content-Type": "text/plain"}
    )
    as_xml = await post(klaviyo_mock, event_body(), headers={**HEADERS, "Accept": "text/xml"})
    assert (as_json.status_code, as_xml.status_code) == (415, 406)


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    *parents, last = path.split("/")
    node = body
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return body


_DELETE = object()
_A = "data/attributes"
_NESTED: dict[str, Any] = {}
_inner = _NESTED
for _ in range(10):
    _inner["n"] = {}
    _inner = _inner["n"]


@pytest.mark.parametrize(
    ("path", "value", "pointer"),
    [
        (f"{_A}/properties", _DELETE, "/data/attributes/properties"),
        (f"{_A}/properties", {f"p{i}": i for i in range(301)}, "/data/attributes/properties"),
        (f"{_A}/properties", {"big": "x" * (100 * 1024 + 1)}, "/data/attributes/properties/big"),
        (f"{_A}/properties", _NESTED, "/data/attributes/properties/n/n/n/n/n/n/n/n/n/n"),
        (
            f"{_A}/metric/data/attributes/name",
            "m" * 128,
            "/data/attributes/metric/data/attributes/name",
        ),
        (f"{_A}/time", "1999-12-31T23:59:59+00:00", "/data/attributes/time"),
        (f"{_A}/time", "2099-01-01T00:00:00+00:00", "/data/attributes/time"),
        (f"{_A}/value", "9.99", "/data/attributes/value"),
        (f"{_A}/value_currency", "euro", "/data/attributes/value_currency"),
        (f"{_A}/profile/data/attributes", {}, "/data/attributes/profile/data/attributes"),
        (
            f"{_A}/profile/data/attributes",
            {"phone_number": "5551234"},
            "/data/attributes/profile/data/attributes/phone_number",
        ),
        (
            # E.164 in shape, but no country assigns it: Klaviyo refuses it.
            f"{_A}/profile/data/attributes",
            {"phone_number": "+15555555555"},
            "/data/attributes/profile/data/attributes/phone_number",
        ),
        (f"{_A}/profile", _DELETE, "/data/attributes/profile"),
        ("data/type", "events", "/data/type"),
        (f"{_A}/colour", "red", "/data/attributes/colour"),
    ],
)
async def test_invalid_bodies_are_400_with_a_pointer(
    klaviyo_mock: KlaviyoMock, path: str, value: Any, pointer: str
) -> None:
    response = await post(klaviyo_mock, _set(event_body(), path, value))
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["code"] == "invalid"
    assert error["source"] == {"pointer": pointer}
    assert klaviyo_mock.timeline("acct") == []


async def test_limits_at_the_boundary_are_accepted(klaviyo_mock: KlaviyoMock) -> None:
    body = event_body(properties={f"p{i}": "x" * 300 for i in range(300)})
    body = _set(body, f"{_A}/metric/data/attributes/name", "m" * 127)
    body = _set(body, f"{_A}/time", "2000-01-01T00:00:00+00:00")
    assert (await post(klaviyo_mock, body)).status_code == 202


async def test_malformed_json_is_400(klaviyo_mock: KlaviyoMock) -> None:
    response = await post(klaviyo_mock, b'{"data": ')
    assert response.status_code == 400
    assert error_of(response)["source"] == {"pointer": "/"}


async def test_repeated_event_is_deduplicated_first_wins(klaviyo_mock: KlaviyoMock) -> None:
    first = event_body("u1", properties={"n": 1})
    again = event_body("u1", properties={"n": 2})
    other_profile = _set(
        event_body("u1"), f"{_A}/profile/data/attributes", {"email": "bob@example.com"}
    )
    for body in (first, again, other_profile):
        assert (await post(klaviyo_mock, body)).status_code == 202
    timeline = klaviyo_mock.timeline("acct")
    assert [(e.profile_identity, e.properties) for e in timeline] == [
        ("email:ada@example.com", {"n": 1}),
        ("email:bob@example.com", {"url": "https://shop.example/"}),
    ]
    assert len(klaviyo_mock.received("acct")) == 3


async def test_bulk_job_is_accepted_and_its_events_recorded(klaviyo_mock: KlaviyoMock) -> None:
    body = bulk_body(("a@example.com", ["c1", "c2"]), ("b@example.com", ["c1"]))
    response = await post(klaviyo_mock, body, path="/api/event-bulk-create-jobs")
    assert response.status_code == 202
    assert [(e.profile_identity, e.unique_id, e.endpoint) for e in klaviyo_mock.timeline()] == [
        ("email:a@example.com", "c1", "bulk"),
        ("email:a@example.com", "c2", "bulk"),
        ("email:b@example.com", "c1", "bulk"),
    ]


async def test_bulk_job_with_a_repeated_unique_id_fails_whole(klaviyo_mock: KlaviyoMock) -> None:
    # The repeat is in a second group for the same profile: still one profile + metric.
    body = bulk_body(("a@example.com", ["c1", "c2"]), ("A@example.com", ["c1"]))
    response = await post(klaviyo_mock, body, path="/api/event-bulk-create-jobs")
    assert response.status_code == 400
    assert "Duplicate unique_id" in error_of(response)["detail"]
    assert klaviyo_mock.timeline() == []


async def test_bulk_job_over_1000_events_or_5_mb_is_400(klaviyo_mock: KlaviyoMock) -> None:
    path = "/api/event-bulk-create-jobs"
    ok = bulk_body(*((f"u{i}@example.com", [f"c{i}"]) for i in range(1000)))
    too_many = bulk_body(*((f"u{i}@example.com", [f"c{i}"]) for i in range(1001)))
    too_big = bulk_body(*((f"u{i}@example.com", [f"c{i}"]) for i in range(60)))
    for group in too_big["data"]["attributes"]["events-bulk-create"]["data"]:
        group["attributes"]["events"]["data"][0]["attributes"]["properties"] = {"pad": "x" * 90_000}
    assert (await post(klaviyo_mock, ok, path=path)).status_code == 202
    assert (await post(klaviyo_mock, too_many, path=path)).status_code == 400
    assert (await post(klaviyo_mock, too_big, path=path)).status_code == 400
    assert len(klaviyo_mock.timeline()) == 1000


async def test_burst_window_throttles_with_retry_after(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.set_limits(events=WindowLimit(burst_per_s=3, steady_per_min=100))
    responses = [await post(klaviyo_mock, event_body(f"u{i}")) for i in range(4)]
    assert [r.status_code for r in responses] == [202, 202, 202, 429]
    assert [r.headers["RateLimit-Remaining"] for r in responses[:3]] == ["99", "98", "97"]
    assert responses[0].headers["RateLimit-Limit"] == "100"
    throttled = responses[3]
    assert throttled.headers["Retry-After"] == "1"
    assert "RateLimit-Remaining" not in throttled.headers
    error = error_of(throttled)
    assert error["code"] == "throttled"
    assert error["detail"] == "Request was throttled. Expected available in 1 second."
    assert klaviyo_mock.throttled_count == 1


async def test_steady_window_and_omitted_retry_after(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.set_limits(
        events=WindowLimit(burst_per_s=100, steady_per_min=2), retry_after_header=False
    )
    statuses = [(await post(klaviyo_mock, event_body(f"u{i}"))).status_code for i in range(2)]
    throttled = await post(klaviyo_mock, event_body("u3"))
    assert statuses == [202, 202]
    assert throttled.status_code == 429
    assert "Retry-After" not in throttled.headers
    assert error_of(throttled)["detail"] in {
        "Request was throttled. Expected available in 60 seconds.",
        "Request was throttled. Expected available in 59 seconds.",
    }


async def test_limits_are_per_account_and_per_endpoint(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.set_limits(events=WindowLimit(2, 100), bulk=WindowLimit(1, 100))
    klaviyo_mock.add_key("pk_secondkeysamesameaccount", "acct")
    klaviyo_mock.add_key("pk_otheraccountotheraccount", "other")
    second = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_secondkeysamesameaccount"}
    other = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_otheraccountotheraccount"}
    assert (await post(klaviyo_mock, event_body("a"))).status_code == 202
    assert (await post(klaviyo_mock, event_body("b"), headers=second)).status_code == 202
    # Two keys, one account: the third request in the second is throttled ...
    assert (await post(klaviyo_mock, event_body("c"))).status_code == 429
    # ... but another account, and the bulk endpoint of the same account, are not.
    assert (await post(klaviyo_mock, event_body("d"), headers=other)).status_code == 202
    bulk = await post(
        klaviyo_mock, bulk_body(("a@example.com", ["x"])), path="/api/event-bulk-create-jobs"
    )
    assert bulk.status_code == 202


async def test_sliding_window_reopens_after_a_second(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.set_limits(events=WindowLimit(2, 100))
    for uid in ("a", "b"):
        assert (await post(klaviyo_mock, event_body(uid))).status_code == 202
    assert (await post(klaviyo_mock, event_body("c"))).status_code == 429
    await asyncio.sleep(1.05)
    assert (await post(klaviyo_mock, event_body("d"))).status_code == 202


async def test_injected_5xx_for_the_next_n_requests(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.inject(Fault(FaultKind.STATUS, status=503, count=2))
    statuses = [(await post(klaviyo_mock, event_body(f"u{i}"))).status_code for i in range(3)]
    assert statuses == [503, 503, 202]
    assert [e.unique_id for e in klaviyo_mock.timeline()] == ["u2"]


async def test_injected_fault_for_a_duration(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.inject(Fault(FaultKind.STATUS, status=500, duration_s=0.3))
    assert (await post(klaviyo_mock, event_body("a"))).status_code == 500
    assert (await post(klaviyo_mock, event_body("b"))).status_code == 500
    await asyncio.sleep(0.35)
    assert (await post(klaviyo_mock, event_body("c"))).status_code == 202


async def test_faults_for_one_account_spare_the_others(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.add_key("pk_otheraccountotheraccount", "other")
    klaviyo_mock.inject(Fault(FaultKind.STATUS, status=504, duration_s=5, account="acct"))
    other = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_otheraccountotheraccount"}
    assert (await post(klaviyo_mock, event_body())).status_code == 504
    assert (await post(klaviyo_mock, event_body(), headers=other)).status_code == 202


async def test_html_error_bodies(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.inject(Fault(FaultKind.HTML, status=403))
    response = await post(klaviyo_mock, event_body())
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text


async def test_slow_hang_and_drop(klaviyo_mock: KlaviyoMock) -> None:
    klaviyo_mock.inject(Fault(FaultKind.SLOW, delay_s=0.3))
    started = time.monotonic()
    assert (await post(klaviyo_mock, event_body("slow"))).status_code == 202
    assert time.monotonic() - started >= 0.3
    klaviyo_mock.inject(Fault(FaultKind.HANG))
    with pytest.raises(httpx.ReadTimeout):
        await post(klaviyo_mock, event_body("hang"), timeout=0.3)
    klaviyo_mock.inject(Fault(FaultKind.DROP))
    with pytest.raises(httpx.RemoteProtocolError):
        await post(klaviyo_mock, event_body("drop"))
    assert [e.unique_id for e in klaviyo_mock.timeline()] == ["slow"]


async def test_admin_api_drives_the_mock(klaviyo_mock: KlaviyoMock) -> None:
    async with httpx.AsyncClient(base_url=klaviyo_mock.base_url) as http:
        await http.post("/__mock__/keys", json={"key": "pk_adminaddedadminadded1", "account": "b"})
        await http.post(
            "/__mock__/limits",
            json={"account": "b", "events": {"burst_per_s": 1, "steady_per_min": 10}},
        )
        headers = {**HEADERS, "Authorization": "Klaviyo-API-Key pk_adminaddedadminadded1"}
        first = await http.post("/api/events", json=event_body("x"), headers=headers)
        second = await http.post("/api/events", json=event_body("y"), headers=headers)
        await http.post("/__mock__/faults", json={"kind": "status", "status": 500, "count": 1})
        third = await http.post("/api/events", json=event_body("z"), headers=HEADERS)
        timeline = (await http.get("/__mock__/timeline", params={"account": "b"})).json()
        stats = (await http.get("/__mock__/stats")).json()
        requests = (await http.get("/__mock__/requests")).json()
    assert (first.status_code, second.status_code, third.status_code) == (202, 429, 500)
    assert [e["unique_id"] for e in timeline] == ["x"]
    assert stats["throttled_count"] == 1
    auth = requests[-1]["headers"]["Authorization"]
    assert TEST_KEY not in auth
    assert auth.endswith(TEST_KEY[-4:])


def test_threaded_mock_serves_sync_callers(klaviyo_mock_thread: KlaviyoMockThread) -> None:
    response = httpx.post(
        f"{klaviyo_mock_thread.base_url}/api/events",
        content=json.dumps(event_body()),
        headers=HEADERS,
    )
    assert response.status_code == 202
    assert [e.unique_id for e in klaviyo_mock_thread.timeline("acct")] == ["u1"]
    klaviyo_mock_thread.inject(Fault(FaultKind.STATUS, status=503))
    assert (
        httpx.post(
            f"{klaviyo_mock_thread.base_url}/api/events",
            content=json.dumps(event_body()),
            headers=HEADERS,
        ).status_code
        == 503
    )


def test_threaded_mock_starts_and_stops_on_its_own() -> None:
    with KlaviyoMockThread(
        MockConfig(keys=(KeySpec(TEST_KEY, "z", frozenset({EVENTS_WRITE})),))
    ) as mock:
        url = mock.base_url
        assert (
            httpx.post(
                f"{url}/api/events", content=json.dumps(event_body()), headers=HEADERS
            ).status_code
            == 202
        )
        assert len(mock.timeline("z")) == 1
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/api/events", content=b"{}", headers=HEADERS)


def test_standalone_mock_runs_as_a_module() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.klaviyo_mock",
            "--port",
            "0",
            "--key",
            TEST_KEY,
            "--account",
            "demo",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.rsplit(" ", 1)[-1].strip()
        assert (
            httpx.post(
                f"{url}/api/events", content=json.dumps(event_body()), headers=HEADERS
            ).status_code
            == 202
        )
        timeline = httpx.get(f"{url}/__mock__/timeline", params={"account": "demo"}).json()
        assert [e["unique_id"] for e in timeline] == ["u1"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


async def test_counting_only_mode_for_benchmarks() -> None:
    config = MockConfig(keys=(KeySpec(TEST_KEY),), record_events=False, max_recorded_requests=0)
    async with KlaviyoMock(config) as mock:
        for uid in ("a", "a", "b"):
            assert (await post(mock, event_body(uid))).status_code == 202
        assert mock.stats()["accounts"]["acct"] == {"timeline": 2, "received": 3}
        assert mock.timeline() == []
        assert mock.requests == []
