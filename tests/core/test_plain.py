"""The batch fast path (``server.intake._plain``) never accepts what the detailed checks refuse.

Whatever the column-at-a-time path takes must be exactly what the field-by-field checks
would have made of the click; everything else must still get the detailed answer. A batch
mixes ordinary clicks with odd and broken ones, so a failure of one column's joined check
has to single out the right clicks and no others.
"""

from __future__ import annotations

import time
from typing import TypeVar

from elido.forwarder.v1 import forwarder_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from server.intake._batch import validate_batch
from server.intake._plain import plain_click, plain_clicks
from server.intake._validation import detailed_click
from server.store._records import IntegrationSettings

T = TypeVar("T")
NOW = 1_800_000_000.0
SETTINGS = IntegrationSettings()


def _settings(_workspace: str) -> IntegrationSettings:
    return SETTINGS


# Values that are usually fine, with the separators and control characters the joined checks
# must not be fooled by, and lengths around every limit.
_tricky = st.sampled_from(
    ["", "\n", "a\nb", "x\x00", "\x7f", " ", "é", "ä" * 70, "[::1]", "HTTPS://", "@", "+"]
)
_ids = st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True), _tricky, st.text())
_urls = st.one_of(
    st.builds(
        lambda host, path: f"https://{host}/{path}",
        st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
        st.from_regex(r"[a-z0-9/?=&_%-]{0,40}", fullmatch=True),
    ),
    st.just("https://shop.example/p?email=ann%40example.com&_kx=abc.DEF123"),
    st.just("https://shop.example/p?utm_email=YW5uQGV4YW1wbGUuY29t"),
    st.just("http://h/" + "p" * 8200),
    st.builds(lambda t: f"https://shop.example/{t}", _tricky),
    _tricky,
    st.text(max_size=30),
)
_emails = st.one_of(
    st.from_regex(r"[a-z0-9.+]{1,10}@[a-z0-9]{1,10}\.[a-z]{2,4}", fullmatch=True),
    st.just("a" * 250 + "@x.io"),
    st.just("jöhn@exämple.com"),
    _tricky,
)


_utm_keys = st.one_of(
    st.from_regex(r"utm_[a-z0-9_]{1,40}", fullmatch=True),
    st.sampled_from(["utm_", "UTM_SOURCE", "utm_a\nutm_b", "utm_" + "a" * 41, "source", "utm_é"]),
    st.text(max_size=10),
)
_utm_values = st.one_of(
    st.text(max_size=20), _tricky, st.sampled_from(["v" * 1024, "v" * 1025, "é" * 1024])
)
_odd_utm = st.one_of(
    st.dictionaries(_utm_keys, _utm_values, min_size=1, max_size=4),
    st.builds(lambda value: {"utm_source": value}, _utm_values),
    st.builds(lambda key: {key: "klaviyo"}, _utm_keys),
    st.just({f"utm_k{i}": "v" for i in range(33)}),
    st.just({f"utm_k{i}": "v" for i in range(32)}),
)


_FIELDS = (
    "workspace_id", "click_id", "destination_url", "short_url", "link_id", "user_agent",
    "referrer", "click_time", "seconds", "nanos", "email", "phone_number", "kx", "utm",
)  # fmt: skip


@st.composite
def _clicks(draw: st.DrawFn) -> pb.Click:
    # Ordinary in every field but at most two: the case where one column's check alone has
    # to single a click out.
    odd = draw(st.sets(st.sampled_from(_FIELDS), max_size=2))
    n = draw(st.integers(0, 10**6))

    def value(field: str, ordinary: T, strategy: st.SearchStrategy[T]) -> T:
        return draw(strategy) if field in odd else ordinary

    click = pb.Click(
        workspace_id=value("workspace_id", "ws-1", st.one_of(st.just("ws.2"), _ids)),
        click_id=value("click_id", f"c-{n}", _ids),
        destination_url=value("destination_url", f"https://shop.example/p/{n}", _urls),
        short_url=value("short_url", "", _urls),
        link_id=value("link_id", "lnk-1", st.one_of(_tricky, st.just("l" * 257))),
        user_agent=value("user_agent", "Mozilla/5.0", st.one_of(_tricky, st.just("u" * 300))),
        referrer=value("referrer", "", _urls),
    )
    if "click_time" not in odd:
        click.click_time.seconds = value(
            "seconds",
            int(NOW) - 5,
            st.integers(min_value=0, max_value=int(NOW) + 2 * 365 * 86400),
        )
        click.click_time.nanos = value(
            "nanos", 0, st.integers(min_value=-2, max_value=1_000_000_001)
        )
    click.identifiers.email = value("email", f"u{n}@example.com", _emails)
    if "phone_number" in odd:
        click.identifiers.phone_number = draw(st.sampled_from(["+14155550100", "12"]))
    if "kx" in odd:
        click.identifiers.kx = draw(st.sampled_from(["abc.DEF123", "bad"]))
    # The sidecar copies every utm_* parameter of the destination URL into the map.
    if "utm" in odd:
        click.utm_parameters.update(draw(_odd_utm))
    elif draw(st.booleans()):
        click.utm_parameters.update({"utm_source": "klaviyo", "utm_campaign": f"c{n % 7}"})
    return click


def _detailed(click: pb.Click, field: str) -> object:
    return detailed_click(click, field, _settings, NOW)


@settings(max_examples=300, deadline=None)
@given(st.lists(_clicks(), min_size=1, max_size=12))
def test_the_fast_path_takes_only_what_the_detailed_checks_accept_alike(
    clicks: list[pb.Click],
) -> None:
    taken = plain_clicks(clicks, NOW, _settings)
    for i, click in enumerate(clicks):
        detailed = _detailed(click, f"clicks[{i}]")
        if i in taken:
            assert detailed == taken[i], f"click {i}: fast {taken[i]!r} != detailed {detailed!r}"
        # The one-click path (ForwardClick) takes exactly what the column path takes.
        alone = plain_click(click, NOW, _settings)
        assert alone == taken.get(i), f"click {i}: one-click path {alone!r}"


@settings(max_examples=200, deadline=None)
@given(st.lists(_clicks(), min_size=1, max_size=12))
def test_a_batch_answers_each_click_as_it_would_be_answered_alone(
    clicks: list[pb.Click],
) -> None:
    request = pb.StreamClicksRequest(batch_id=1, clicks=clicks)
    batch = validate_batch(request, _settings, NOW)
    valid = dict(zip(batch.slots, batch.valid, strict=True))
    for i, click in enumerate(clicks):
        alone = _detailed(pb.Click.FromString(click.SerializeToString()), f"clicks[{i}]")
        if isinstance(alone, list):
            assert batch.outcome.violations[i] == alone
            assert i not in valid
        else:
            assert valid[i] == alone
            assert i not in batch.outcome.violations


def test_ordinary_clicks_are_taken_by_the_fast_path_and_odd_ones_left_alone() -> None:
    now = time.time()
    clicks = []
    for n in range(50):
        click = pb.Click(
            workspace_id="ws-1",
            click_id=f"c-{n}",
            destination_url=f"https://shop.example/p/{n}?utm_source=klaviyo",
            link_id="lnk",
            user_agent="Mozilla/5.0",
            utm_parameters={"utm_source": "klaviyo"},
        )
        click.click_time.seconds = int(now) - 5
        click.identifiers.email = f"user{n}@example.com"
        clicks.append(click)
    clicks[7].identifiers.phone_number = "+14155550100"
    clicks[9].click_id = "bad id"
    clicks[11].user_agent = "tab\there"
    clicks[13].destination_url = "https://shop.example/p?email=ann%40example.com"
    clicks[17].utm_parameters["utm_Campaign"] = "bf"
    clicks[19].utm_parameters["utm_term"] = "a\x00b"

    taken = plain_clicks(clicks, now, _settings)

    assert sorted(set(range(50)) - set(taken)) == [7, 9, 11, 17, 19]
    assert taken[13].identifiers.email == "user13@example.com"  # the field wins over the URL
    assert taken[0].identifiers.email == "user0@example.com"
    clicks[13].identifiers.email = ""
    assert plain_clicks(clicks, now, _settings)[13].identifiers.email == "ann@example.com"


def _ordinary(n: int) -> pb.Click:
    click = pb.Click(
        workspace_id="ws-1",
        click_id=f"c-{n}",
        destination_url=f"https://shop.example/p/{n}",
        short_url="https://s.example/x",
        user_agent="Mozilla/5.0",
        utm_parameters={"utm_source": "klaviyo"},
    )
    click.click_time.seconds = int(NOW) - 5
    click.identifiers.email = f"u{n}@example.com"
    return click


def test_a_value_holding_the_separator_is_not_taken_for_two_valid_values() -> None:
    # Each value joined here would pass as two well-formed values if it were split at "\n".
    odd = {
        "click_id": "c-1\nc-2",
        "destination_url": "https://a.example/\nhttps://b.example/",
        "short_url": "https://a.example/\nhttps://b.example/",
        "email": "a@example.com\nb@example.com",
        "utm_parameters": "utm_a\nutm_b",
    }
    for field, value in odd.items():
        clicks = [_ordinary(n) for n in range(3)]
        target = clicks[1].identifiers if field == "email" else clicks[1]
        if field == "utm_parameters":
            clicks[1].utm_parameters[value] = "x"
        else:
            setattr(target, field, value)
        taken = plain_clicks(clicks, NOW, _settings)
        assert sorted(taken) == [0, 2], field
        assert isinstance(_detailed(clicks[1], "clicks[1]"), list), field
