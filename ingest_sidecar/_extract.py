"""Turns a click record from the edge proxy into a ``Click`` message.

The record is a JSON object (posted over HTTP, or one line of an access log mapped through
``tail.fields``). The click id, the recipient's identifiers and every ``utm_*`` parameter are
read from the record and from the destination URL's query string. The sidecar applies the
server's validation rules itself, so that a click the server would reject is skipped here with
a precise reason instead of travelling.
"""

from __future__ import annotations

import json
import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from elido.forwarder.v1 import forwarder_pb2

from elido_common.syntax import (
    EVENT_ID,
    MAX_EXTERNAL_ID,
    PHONE_PATTERN,
    WORKSPACE_ID,
    email_from_parameter,
    kx_from_parameter,
)

from . import _wire
from ._config import ExtractConfig
from ._ids import UlidGenerator, derived_ulid

# The server's own syntax rules: an identifier it would refuse must not leave the edge.
CLICK_ID_RE: Final = EVENT_ID
WORKSPACE_ID_RE: Final = WORKSPACE_ID
MAX_URL_BYTES: Final = 8 * 1024
MAX_USER_AGENT_BYTES: Final = 1024
MAX_REFERRER_BYTES: Final = 2 * 1024
MAX_EXTERNAL_ID_CHARS: Final = MAX_EXTERNAL_ID
MIN_TIME: Final = datetime.fromisoformat("2000-01-01T00:00:00+00:00").timestamp()
ONE_YEAR_S: Final = 366 * 24 * 3600.0
# http(s)://netloc then path, query and fragment, all printable ASCII without brackets.
_PLAIN_HTTP_URL: Final = re.compile(
    r"[hH][tT][tT][pP][sS]?://([^/?#\[\]\x00-\x20\x7f-\U0010ffff]+)([^\[\]\x00-\x20\x7f-\U0010ffff]*)"
)

# Logical record fields (what `tail.fields` maps onto log fields).
RECORD_FIELDS: Final = (
    "click_id",
    "workspace_id",
    "link_id",
    "short_url",
    "destination_url",
    "click_time",
    "user_agent",
    "referrer",
    "email",
    "phone_number",
    "external_id",
    "kx",
    "utm_parameters",
)


# ``_wire.ClickEncoder.click``'s arguments: click_id, workspace_id, click_time seconds and
# nanos, link_id, short_url, destination_url, utm_parameters, email, phone_number,
# external_id, kx, user_agent, referrer.
_ClickFields = tuple[
    str, str, int, int, str, str, str, dict[str, str], str, str, str, str, str, str
]
_NO_MAPPING: Final[Mapping[str, str]] = {}


class Skip(Exception):
    """The record cannot become a click; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Extracted:
    """A click ready for the spool, and what was noticed on the way."""

    click: forwarder_pb2.Click
    # Kinds of identifiers found but invalid (e.g. "email"), for counting.
    invalid_identifiers: list[str] = field(default_factory=list)


def _get_path(record: Mapping[str, Any], path: str) -> Any:
    if "." not in path:
        return record.get(path)
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(record: Mapping[str, Any], name: str, mapping: Mapping[str, str]) -> str:
    """The string field ``name`` (through ``mapping``); empty when absent or an empty marker."""
    value = _get_path(record, mapping[name]) if mapping else record.get(name)
    if value.__class__ is str:
        # nginx logs an unset variable as "-" (or an empty string).
        return "" if value == "-" else value
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Skip("wrong_type", f"{name} must be a string")
    return str(value)


def _parse_time(value: Any, now: float) -> float:
    if value is None or value in ("", "-"):
        return now
    if isinstance(value, bool):
        raise Skip("wrong_type", "click_time must be a number or a string")
    seconds: float
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            # nginx $msec and Envoy's epoch formats arrive as decimal strings.
            seconds = float(value)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise Skip("invalid_time", "click_time is not ISO 8601 or epoch") from None
            if parsed.tzinfo is None:
                raise Skip("invalid_time", "click_time has no time zone") from None
            seconds = parsed.timestamp()
    else:
        raise Skip("wrong_type", "click_time must be a number or a string")
    if seconds > 1e11:
        # Epoch milliseconds: seconds this large would be past the year 5000.
        seconds /= 1000.0
    if not MIN_TIME < seconds <= now + ONE_YEAR_S:
        raise Skip("invalid_time", "click_time out of range")
    return seconds


def _split_http(url: str) -> tuple[str, str] | None:
    """(netloc, query) of an absolute http(s) URL, or None if it is not one.

    ``urlsplit`` costs ~4 µs a URL; the plain printable-ASCII URLs the proxy almost always
    sends are split by one regular expression, with the same result. Anything else
    (non-ASCII, whitespace or controls that urlsplit strips, IPv6 brackets it validates,
    other schemes) goes to urlsplit.
    """
    plain = _PLAIN_HTTP_URL.fullmatch(url)
    if plain is not None:
        return plain.group(1), plain.group(2).partition("#")[0].partition("?")[2]
    try:
        parts = urlsplit(url)
    except ValueError:
        raise Skip("invalid_url", "not a URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc, parts.query


def _check_url(url: str, name: str) -> str:
    """The query of ``url`` (Skip unless it is an absolute http(s) URL <= 8 KiB)."""
    if (len(url) > MAX_URL_BYTES // 4) and len(
        url.encode("utf-8", "surrogatepass")
    ) > MAX_URL_BYTES:
        raise Skip("url_too_long", f"{name} longer than 8 KiB")
    try:
        split = _split_http(url)
    except Skip:
        raise Skip("invalid_url", f"{name} is not a URL") from None
    if split is None:
        raise Skip("invalid_url", f"{name} is not an absolute http(s) URL")
    return split[1]


# Every two-hex-digit escape (either case) and, for those below 0x80, its character.
_HEX_PAIRS: Final = frozenset(a + b for a in string.hexdigits for b in string.hexdigits)
_HEX_ASCII: Final = {pair: chr(int(pair, 16)) for pair in _HEX_PAIRS if int(pair, 16) < 0x80}


def _unquote(text: str) -> str:
    """``urllib.parse.unquote(text)``, ~4x faster when every escape is an ASCII character.

    unquote decodes escaped bytes as UTF-8 (errors replaced); escapes of bytes >= 0x80 (UTF-8
    sequences) are left to it. An escape that is not two hex digits stays as it is, as there.
    """
    if "%" not in text:
        return text
    pieces = text.split("%")
    parts = [pieces[0]]
    for piece in pieces[1:]:
        char = _HEX_ASCII.get(piece[:2])
        if char is not None:
            parts.append(char)
            parts.append(piece[2:])
        elif piece[:2] in _HEX_PAIRS:
            return unquote(text)
        else:
            parts.append("%")
            parts.append(piece)
    return "".join(parts)


def _query(query: str) -> dict[str, str]:
    """``dict(parse_qsl(query))`` keeping each name's first value, without its overhead."""
    params: dict[str, str] = {}
    if not query:
        return params
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if not eq or not value:
            # parse_qsl without keep_blank_values drops `name` and `name=` alike.
            continue
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = _unquote(name)
        if name in params:
            continue
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = _unquote(value)
        params[name] = value
    return params


def _fits(text: str, limit: int) -> bool:
    return len(text) <= limit // 4 or len(text.encode("utf-8", "surrogatepass")) <= limit


def _truncate_utf8(text: str, limit: int) -> str:
    if _fits(text, limit):
        return text
    return text.encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def _fingerprint(record: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8", "replace")
    except (TypeError, ValueError):
        return repr(sorted(record.items(), key=str)).encode("utf-8", "replace")


def normalize_email(value: str) -> str:
    """The address in ``value`` (plain, URL-encoded or base64), or "" if none is valid."""
    return email_from_parameter(value)


def normalize_phone(value: str) -> str:
    """The E.164 number in ``value``, or "" if it is not one."""
    candidate = value.strip()
    if value[:1] == " " and candidate[:1].isdigit():
        # `+14155550100` unencoded in a query string arrives as ` 14155550100`.
        candidate = "+" + candidate
    candidate = re.sub(r"[\s().-]", "", candidate)
    return candidate if PHONE_PATTERN.fullmatch(candidate) else ""


class Extractor:
    """Builds ``Click`` messages from records according to an :class:`ExtractConfig`."""

    def __init__(self, config: ExtractConfig, ids: UlidGenerator | None = None) -> None:
        self._config = config
        self._ids = ids or UlidGenerator()
        self._identifier_params = {
            *config.email_parameters,
            *config.phone_parameters,
            *config.external_id_parameters,
            config.kx_parameter,
        }
        self._kx_params = (config.kx_parameter,) if config.kx_parameter else ()
        self._encoder = _wire.ClickEncoder()
        self._mapping_source: Mapping[str, str] | None = None
        self._mapping: dict[str, str] = {}

    def extract(
        self,
        record: Any,
        mapping: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> Extracted:
        """The click for ``record``; raises :class:`Skip` with a reason if there is none."""
        (
            (
                click_id,
                workspace_id,
                seconds,
                nanos,
                link_id,
                short_url,
                destination_url,
                utm,
                email,
                phone,
                external_id,
                kx,
                user_agent,
                referrer,
            ),
            invalid,
        ) = self._fields(record, mapping, now)
        # Sub-messages given as dicts: upb builds them in C, ~2x faster than setting
        # `click.click_time.seconds` and friends through their Python wrappers.
        click = forwarder_pb2.Click(
            click_id=click_id,
            workspace_id=workspace_id,
            # The stubs do not declare the dict form protobuf accepts for message fields.
            click_time={"seconds": seconds, "nanos": nanos},  # type: ignore[arg-type]
            link_id=link_id,
            short_url=short_url,
            destination_url=destination_url,
            utm_parameters=utm,
            identifiers={  # type: ignore[arg-type]  # (the dict form, as above)
                "email": email,
                "phone_number": phone,
                "external_id": external_id,
                "kx": kx,
            },
            user_agent=user_agent,
            referrer=referrer,
        )
        return Extracted(click, invalid)

    def serialize(
        self,
        record: Any,
        mapping: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> tuple[bytes, list[str]]:
        """``extract(record).click.SerializeToString()`` and the invalid identifier kinds.

        The spool's path: the same fields, written as protobuf bytes directly (``_wire.py``)
        rather than through a message object. Raises :class:`Skip` like :meth:`extract`.
        """
        fields, invalid = self._fields(record, mapping, now)
        return self._encoder.click(*fields), invalid

    def _fields(
        self, record: Any, mapping: Mapping[str, str] | None, now: float | None
    ) -> tuple[_ClickFields, list[str]]:
        """The click's field values in ``_wire.click``'s order, and the invalid identifiers."""
        if not isinstance(record, dict):
            raise Skip("not_an_object", "a click record must be a JSON object")
        if mapping:
            if mapping is not self._mapping_source:
                # Completed once per mapping: unmapped fields use their own name.
                self._mapping = {name: mapping.get(name, name) for name in RECORD_FIELDS}
                self._mapping_source = mapping
            mapping = self._mapping
        else:
            mapping = _NO_MAPPING
        now = time.time() if now is None else now
        config = self._config

        workspace_id = _text(record, "workspace_id", mapping)
        if not workspace_id:
            raise Skip("missing_workspace_id")
        if not WORKSPACE_ID_RE.fullmatch(workspace_id):
            raise Skip("invalid_workspace_id")
        destination_url = _text(record, "destination_url", mapping)
        if not destination_url:
            raise Skip("missing_destination_url")
        query = _query(_check_url(destination_url, "destination_url"))
        short_url = _text(record, "short_url", mapping)
        if short_url:
            _check_url(short_url, "short_url")
        raw_time = _get_path(record, mapping["click_time"]) if mapping else record.get("click_time")
        click_time = _parse_time(raw_time, now)

        click_id = _text(record, "click_id", mapping)
        if not click_id and config.click_id_parameter:
            click_id = query.get(config.click_id_parameter, "")
        if click_id:
            if not CLICK_ID_RE.fullmatch(click_id):
                raise Skip("invalid_click_id")
        elif raw_time not in (None, "", "-"):
            click_id = derived_ulid(int(click_time * 1000), _fingerprint(record))
        else:
            click_id = self._ids.new(int(now * 1000))

        invalid: list[str] = []
        email = self._identifier(
            record, mapping, "email", query, config.email_parameters, normalize_email, invalid
        )
        phone = self._identifier(
            record,
            mapping,
            "phone_number",
            query,
            config.phone_parameters,
            normalize_phone,
            invalid,
        )
        external_id = self._identifier(
            record,
            mapping,
            "external_id",
            query,
            config.external_id_parameters,
            self._normalize_external_id,
            invalid,
        )
        kx = self._identifier(
            record, mapping, "kx", query, self._kx_params, self._normalize_kx, invalid
        )
        if not (email or phone or external_id or kx) and not config.forward_anonymous:
            raise Skip("anonymous")

        identifier_params = self._identifier_params
        utm = {
            key: value
            for key, value in query.items()
            if key.startswith("utm_") and key not in identifier_params
        }
        given_utm = (
            _get_path(record, mapping["utm_parameters"])
            if mapping
            else record.get("utm_parameters")
        )
        if given_utm is not None:
            if not isinstance(given_utm, Mapping):
                raise Skip("wrong_type", "utm_parameters must be an object")
            for key, value in given_utm.items():
                if not isinstance(value, str):
                    raise Skip("wrong_type", "utm_parameters values must be strings")
                if key.startswith("utm_"):
                    utm[key] = value

        referrer = _text(record, "referrer", mapping)
        if referrer and not _fits(referrer, MAX_REFERRER_BYTES):
            # A cut URL would be misleading; the referrer is only context.
            referrer = ""
        whole = int(click_time)
        return (
            click_id,
            workspace_id,
            whole,
            int((click_time - whole) * 1e9),
            _text(record, "link_id", mapping),
            short_url,
            destination_url,
            utm,
            email,
            phone,
            external_id,
            kx,
            _truncate_utf8(_text(record, "user_agent", mapping), MAX_USER_AGENT_BYTES),
            referrer,
        ), invalid

    @staticmethod
    def _normalize_external_id(value: str) -> str:
        value = value.strip()
        return value if 0 < len(value) <= MAX_EXTERNAL_ID_CHARS else ""

    @staticmethod
    def _normalize_kx(value: str) -> str:
        return kx_from_parameter(value)

    @staticmethod
    def _identifier(
        record: Mapping[str, Any],
        mapping: Mapping[str, str],
        name: str,
        query: Mapping[str, str],
        parameters: tuple[str, ...],
        normalize: Any,
        invalid: list[str],
    ) -> str:
        """The first valid identifier: the record's own field, then the URL's parameters."""
        seen_invalid = False
        candidate = _text(record, name, mapping)
        if candidate:
            normalized: str = normalize(candidate)
            if normalized:
                return normalized
            seen_invalid = True
        for parameter in parameters:
            candidate = query.get(parameter, "")
            if candidate:
                normalized = normalize(candidate)
                if normalized:
                    return normalized
                seen_invalid = True
        if seen_invalid:
            invalid.append(name)
        return ""
