"""Profile identifiers and UTM parameters read from a click's destination URL.

Klaviyo email links carry the recipient as a template tag in a link parameter: ``{{ email }}``
(plain, where a ``+`` arrives as a space), ``{{ person.email|urlencode }}``, or
``{{ person.email|base64_encode }}``; and ``_kx`` when "email to website tracking" is on.
Values from a URL are untrusted: an invalid one is ignored, never an error.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from server.store._records import Identifiers

EMAIL_PATTERN: Final = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
PHONE_PATTERN: Final = re.compile(r"\+[1-9][0-9]{6,14}")
# `<urlencoded base64-like token>.<6-char suffix>`, after URL decoding.
KX_PATTERN: Final = re.compile(r"[A-Za-z0-9+/=_-]{8,400}\.[A-Za-z0-9]{6}")
UTM_KEY_PATTERN: Final = re.compile(r"utm_[a-z0-9_]{1,40}")


def is_email(value: str) -> bool:
    """True for a syntactically valid email address (at most 254 characters)."""
    return len(value) <= 254 and EMAIL_PATTERN.fullmatch(value) is not None


def _email_from_parameter(raw: str) -> str:
    """The email a link parameter carries, or "" if it carries none."""
    value = raw.strip()
    if is_email(value):
        return value
    if " " in value:
        # `{{ email }}` unencoded: the `+` of `jane+news@x.com` was decoded as a space.
        repaired = value.replace(" ", "+")
        if is_email(repaired):
            return repaired
    candidate = value.replace(" ", "+")
    try:
        decoded = base64.b64decode(
            candidate + "=" * (-len(candidate) % 4),
            altchars=b"-_" if ("-" in candidate or "_" in candidate) else None,
            validate=True,
        ).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""
    return decoded if is_email(decoded) else ""


@dataclass(frozen=True, slots=True)
class UrlFacts:
    """What a destination URL tells about the click."""

    identifiers: Identifiers
    utm: dict[str, str]


def facts_from_url(url: str, email_parameters: Iterable[str]) -> UrlFacts:
    """Identifiers (email from ``email_parameters``, ``_kx``) and UTM parameters of ``url``."""
    if "?" not in url:
        return UrlFacts(Identifiers(), {})
    query = urlsplit(url).query
    email = kx = ""
    utm: dict[str, str] = {}
    wanted = frozenset(email_parameters)
    for key, value in parse_qsl(query, keep_blank_values=False):
        if key in wanted:
            # Never copied into UTM properties: it is the recipient's address.
            email = email or _email_from_parameter(value)
            continue
        if key == "_kx" and not kx:
            candidate = value.replace(" ", "+")
            kx = candidate if KX_PATTERN.fullmatch(candidate) else ""
        if key.startswith("utm_") and UTM_KEY_PATTERN.fullmatch(key) and len(value) <= 1024:
            utm.setdefault(key, value)
    return UrlFacts(Identifiers(email=email, kx=kx), utm)
