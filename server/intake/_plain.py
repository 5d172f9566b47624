"""The fast path of batch validation: ordinary clicks proven valid a column at a time.

Nearly every click a proxy or the sidecar sends is ordinary: a workspace id, a click id, a
time, http(s) URLs, a user agent, perhaps a referrer, a link id, the ``utm_*`` parameters
(the sidecar copies them from the destination URL) and an ASCII email. Checked
one by one, field by field, those cost several microseconds a click in Python calls alone.
Here each field of the batch is read once into a column, and a column is checked in C: one
regex over its values joined by a separator the pattern refuses (and the separator counted,
so a value holding the separator cannot pass as two), ``min``/``max`` over numbers, one
search for control characters over a column's concatenation.

Sufficient, never necessary: a click this path does not prove valid goes to the detailed
checks of :mod:`server.intake._validation`, which decide and name every bad field. A column
whose joined check fails is checked value by value, so one odd click costs only itself.
``tests/core/test_plain.py`` checks that whatever this path accepts, the detailed checks
accept alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Final

from elido.forwarder.v1 import forwarder_pb2 as pb

from elido_common.syntax import EMAIL_PATTERN, EVENT_ID, UTM_KEY_PATTERN, WORKSPACE_ID
from server.intake._identifiers import identifier_parameters, identifiers_from_url
from server.store._records import Identifiers, IntegrationSettings, NewClick

SettingsLookup = Callable[[str], IntegrationSettings | None]
_DEFAULTS: Final = IntegrationSettings()
_NO_IDENTIFIERS: Final = Identifiers()

# The limits of the detailed checks (imported there from here, so they cannot drift).
MIN_TIME: Final = 946684800.0  # 2000-01-01T00:00:00Z
MAX_AHEAD_S: Final = 365 * 86400.0
MAX_URL: Final = 8192
MAX_USER_AGENT: Final = 1024
MAX_REFERRER: Final = 2048
MAX_LINK_ID: Final = 256
MAX_EMAIL: Final = 254
MAX_UTM: Final = 32
MAX_UTM_VALUE: Final = 1024  # characters

CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Sufficient conditions for a valid URL: an http(s) scheme, a host without brackets,
# whitespace or control characters, and no control character after it.
PLAIN_URL: Final = r"(?i:https?://[^\x00-\x20\x7f/?#\[\]]+(?:[/?#][^\x00-\x1f\x7f]*)?)"
_SEPARATOR: Final = "\n"  # refused by every pattern joined with it


def _joined(pattern: str) -> re.Pattern[str]:
    """A pattern matching one or more values of ``pattern`` separated by newlines."""
    return re.compile(rf"(?:{pattern}\n)*{pattern}")


_URLS: Final = _joined(PLAIN_URL)
_EVENT_IDS: Final = _joined(EVENT_ID.pattern)
_EMAILS: Final = _joined(EMAIL_PATTERN.pattern)
_UTM_KEYS: Final = _joined(UTM_KEY_PATTERN.pattern)
_ONE_URL: Final = re.compile(PLAIN_URL)
_KX_PARAMETER: Final = identifier_parameters(())


def _all_match(joined: re.Pattern[str], values: Sequence[str]) -> bool:
    text = _SEPARATOR.join(values)
    return joined.fullmatch(text) is not None and text.count(_SEPARATOR) == len(values) - 1


def fits(value: str, limit: int) -> bool:
    """True if ``value`` takes at most ``limit`` bytes in UTF-8."""
    # UTF-8 needs at most 4 bytes a character: most strings pass without being encoded.
    return len(value) * 4 <= limit or len(value.encode()) <= limit


class _Columns:
    """One batch's fields, a list per field, and the positions proven not plain so far."""

    __slots__ = (
        "click_ids",
        "destinations",
        "emails",
        "nanos",
        "not_plain",
        "seconds",
        "workspaces",
    )

    def __init__(self, clicks: Sequence[pb.Click]) -> None:
        self.not_plain: set[int] = set()
        self.workspaces = [c.workspace_id for c in clicks]
        self.click_ids = [c.click_id for c in clicks]
        times = [c.click_time for c in clicks]
        self.seconds = [t.seconds for t in times]
        self.nanos = [t.nanos for t in times]
        self.destinations = [c.destination_url for c in clicks]
        self.emails: list[str] = []

    def check(self, values: Sequence[str], ok: Callable[[str], object]) -> None:
        """Rule out every position whose (non-empty) value fails ``ok``."""
        self.not_plain.update(i for i, v in enumerate(values) if v and not ok(v))

    def lengths(self, values: Sequence[str], limit: int) -> None:
        """Rule out every value longer than ``limit`` UTF-8 bytes."""
        if values and max(map(len, values)) * 4 > limit:
            self.check(values, lambda v: fits(v, limit))

    def pattern(self, values: Sequence[str], joined: re.Pattern[str], one: re.Pattern[str]) -> None:
        """Rule out every non-empty value that ``one`` does not fully match."""
        present = [v for v in values if v]
        if present and not _all_match(joined, present):
            self.check(values, one.fullmatch)


def _positions(clicks: Sequence[pb.Click], now: float, cols: _Columns) -> None:
    out = cols.not_plain
    bad = {w for w in set(cols.workspaces) if WORKSPACE_ID.fullmatch(w) is None}
    if bad:
        out.update(i for i, w in enumerate(cols.workspaces) if w in bad)
    click_ids = cols.click_ids
    if not _all_match(_EVENT_IDS, click_ids):
        out.update(i for i, v in enumerate(click_ids) if EVENT_ID.fullmatch(v) is None)

    # A missing click_time reads as 0 seconds, which is out of range: the detailed checks
    # then report it as required.
    seconds, nanos = cols.seconds, cols.nanos
    latest = now + MAX_AHEAD_S - 1
    if not (min(seconds) >= MIN_TIME and max(seconds) <= latest):
        out.update(i for i, s in enumerate(seconds) if not MIN_TIME <= s <= latest)
    if not (min(nanos) >= 0 and max(nanos) < 1_000_000_000):
        out.update(i for i, ns in enumerate(nanos) if not 0 <= ns < 1_000_000_000)

    for urls in (cols.destinations, [c.short_url for c in clicks]):
        cols.lengths(urls, MAX_URL)
        cols.pattern(urls, _URLS, _ONE_URL)

    texts = (
        ([c.link_id for c in clicks], MAX_LINK_ID),
        ([c.user_agent for c in clicks], MAX_USER_AGENT),
        ([c.referrer for c in clicks], MAX_REFERRER),
    )
    for values, limit in texts:
        cols.lengths(values, limit)
    if CONTROL.search("".join(chain.from_iterable(v for v, _ in texts))) is not None:
        for values, _ in texts:
            cols.check(values, lambda v: CONTROL.search(v) is None)

    identifiers = [c.identifiers for c in clicks]
    for other in (
        [ids.phone_number for ids in identifiers],
        [ids.external_id for ids in identifiers],
        [ids.kx for ids in identifiers],
    ):
        if any(other):
            out.update(i for i, v in enumerate(other) if v)
    _utm_positions(clicks, out)
    emails = cols.emails = [ids.email for ids in identifiers]
    cols.lengths(emails, MAX_EMAIL)  # ASCII, so bytes are characters
    if not "".join(emails).isascii():
        out.update(i for i, e in enumerate(emails) if not e.isascii())
    cols.pattern(emails, _EMAILS, EMAIL_PATTERN)


def _utm_positions(clicks: Sequence[pb.Click], out: set[int]) -> None:
    maps = [c.utm_parameters for c in clicks]
    if not any(maps):
        return
    # A map iterates its keys in C; its items() would be Python code, entry by entry.
    keys = [key for m in maps for key in m]
    values = [m[key] for m in maps for key in m]
    if (
        max(map(len, maps)) > MAX_UTM
        or not _all_match(_UTM_KEYS, keys)
        or max(map(len, values)) > MAX_UTM_VALUE
        or CONTROL.search("".join(values)) is not None
    ):
        out.update(i for i, m in enumerate(maps) if m and not _plain_utm(m))


def _plain_utm(utm: Mapping[str, str]) -> bool:
    return len(utm) <= MAX_UTM and all(
        UTM_KEY_PATTERN.fullmatch(key) is not None
        and len(value) <= MAX_UTM_VALUE
        and CONTROL.search(value) is None
        for key, value in utm.items()
    )


def plain_clicks(
    clicks: Sequence[pb.Click], now: float, settings_for: SettingsLookup
) -> dict[int, NewClick]:
    """The clicks that certainly pass every detailed check, ready to commit, by position.

    Such a click has: a well-formed workspace and click id; a click time from 2000 to a year
    ahead; absolute http(s) URLs within limits; a link id, user agent and referrer within
    limits and free of control characters; as identifiers at most an ASCII email; a UTM map
    of at most :data:`MAX_UTM` well-formed ``utm_*`` keys with values within limits and free
    of control characters. Everything else (phone numbers, external ids, exchange ids,
    unicode emails, anything wrong) is left to the detailed checks. The caller has already
    dropped unknown fields: the payload is the click as serialized here.
    """
    if not clicks:
        return {}
    cols = _Columns(clicks)
    _positions(clicks, now, cols)
    out = cols.not_plain
    keep = [i for i in range(len(clicks)) if i not in out] if out else range(len(clicks))
    workspaces, click_ids, emails = cols.workspaces, cols.click_ids, cols.emails
    seconds, nanos = cols.seconds, cols.nanos
    taken = {
        i: NewClick(
            workspaces[i],
            click_ids[i],
            seconds[i] + nanos[i] / 1e9,
            Identifiers(emails[i]) if emails[i] else _NO_IDENTIFIERS,
            clicks[i].SerializeToString(),
        )
        for i in keep
    }
    _add_url_identifiers(taken, cols.destinations, settings_for)
    return taken


def plain_click(click: pb.Click, now: float, settings_for: SettingsLookup) -> NewClick | None:
    """:func:`plain_clicks` for one click (a ForwardClick): the same conditions, checked on
    the click directly, since for one value a column costs more than it saves."""
    workspace_id, click_id = click.workspace_id, click.click_id
    ts = click.click_time
    seconds, nanos = ts.seconds, ts.nanos
    if (
        WORKSPACE_ID.fullmatch(workspace_id) is None
        or EVENT_ID.fullmatch(click_id) is None
        or not MIN_TIME <= seconds <= now + MAX_AHEAD_S - 1
        or not 0 <= nanos < 1_000_000_000
    ):
        return None
    destination, short = click.destination_url, click.short_url
    for url in (destination, short):
        if url and (not fits(url, MAX_URL) or _ONE_URL.fullmatch(url) is None):
            return None
    link_id, user_agent, referrer = click.link_id, click.user_agent, click.referrer
    ids = click.identifiers
    email = ids.email
    if (
        not fits(link_id, MAX_LINK_ID)
        or not fits(user_agent, MAX_USER_AGENT)
        or not fits(referrer, MAX_REFERRER)
        or CONTROL.search(link_id + user_agent + referrer) is not None
        or ids.phone_number
        or ids.external_id
        or ids.kx
        or (click.utm_parameters and not _plain_utm(click.utm_parameters))
        or (
            email
            and not (
                len(email) <= MAX_EMAIL
                and email.isascii()
                and EMAIL_PATTERN.fullmatch(email) is not None
            )
        )
    ):
        return None
    taken = {
        0: NewClick(
            workspace_id,
            click_id,
            seconds + nanos / 1e9,
            Identifiers(email) if email else _NO_IDENTIFIERS,
            click.SerializeToString(),
        )
    }
    _add_url_identifiers(taken, (destination,), settings_for)
    return taken[0]


def _add_url_identifiers(
    taken: dict[int, NewClick], destinations: Sequence[str], settings_for: SettingsLookup
) -> None:
    """Fill identifiers from the destination URLs, the click's own fields winning."""
    by_workspace: dict[str, list[int]] = {}
    for i, click in taken.items():
        if destinations[i]:
            by_workspace.setdefault(click.workspace_id, []).append(i)
    for workspace_id, positions in by_workspace.items():
        settings = settings_for(workspace_id) or _DEFAULTS
        # A click that names its email (the sidecar copies it from the URL) can take only
        # `_kx` from the URL: the field wins over the URL's email parameters.
        named = [i for i in positions if taken[i].identifiers.email]
        unnamed = [i for i in positions if not taken[i].identifiers.email]
        for group, pattern in (
            (unnamed, identifier_parameters(settings.email_parameters)),
            (named, _KX_PARAMETER),
        ):
            # One search over the group's URLs joined: most carry no such parameter.
            if not group or pattern.search(_SEPARATOR.join(destinations[i] for i in group)) is None:
                continue
            for i in group:
                if pattern.search(destinations[i]) is not None:
                    found = identifiers_from_url(destinations[i], settings.email_parameters)
                    taken[i].identifiers = taken[i].identifiers.merged_over(found)
