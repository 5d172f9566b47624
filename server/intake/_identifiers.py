"""Profile identifiers and UTM parameters read from a click's destination URL.

Klaviyo email links carry the recipient as a template tag in a link parameter: ``{{ email }}``
(plain, where a ``+`` arrives as a space), ``{{ person.email|urlencode }}``, or
``{{ person.email|base64_encode }}``; and ``_kx`` when "email to website tracking" is on.
Values from a URL are untrusted: an invalid one is ignored, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from elido_common.syntax import (
    MAX_UTM_VALUE,
    UTM_KEY_PATTERN,
    email_from_parameter,
    kx_from_parameter,
)
from server.store._records import Identifiers


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
            email = email or email_from_parameter(value)
            continue
        if key == "_kx" and not kx:
            kx = kx_from_parameter(value)
        if (
            key.startswith("utm_")
            and UTM_KEY_PATTERN.fullmatch(key)
            and len(value) <= MAX_UTM_VALUE
        ):
            utm.setdefault(key, value)
    return UrlFacts(Identifiers(email=email, kx=kx), utm)
