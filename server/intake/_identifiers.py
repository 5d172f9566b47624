"""Profile identifiers read from a click's destination URL.

Klaviyo email links carry the recipient as a template tag in a link parameter: ``{{ email }}``
(plain, where a ``+`` arrives as a space), ``{{ person.email|urlencode }}``, or
``{{ person.email|base64_encode }}``; and ``_kx`` when "email to website tracking" is on.
Values from a URL are untrusted: an invalid one is ignored, never an error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from elido_common.syntax import email_from_parameter, kx_from_parameter
from server.store._records import Identifiers, IntegrationSettings


def identifiers_from_url(url: str, email_parameters: Iterable[str]) -> Identifiers:
    """The email (from ``email_parameters``) and ``_kx`` that ``url``'s query carries.

    UTM parameters are read at delivery time (``server/delivery/_properties.py``), not here.
    """
    if "?" not in url:
        return Identifiers()
    email = kx = ""
    wanted = frozenset(email_parameters)
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=False):
        if key in wanted:
            email = email or email_from_parameter(value)
        elif key == "_kx" and not kx:
            kx = kx_from_parameter(value)
    return Identifiers(email=email, kx=kx)


@functools.lru_cache(maxsize=256)
def identifier_parameters(email_parameters: tuple[str, ...]) -> re.Pattern[str]:
    """Finds a query parameter that may carry an identifier, in a URL or in joined URLs."""
    names = "|".join(re.escape(n) for n in (*email_parameters, "_kx"))
    return re.compile(rf"[?&](?:{names})=")


def url_identifiers(url: str, settings: IntegrationSettings) -> Identifiers | None:
    """Identifiers in the URL's query, or None when it cannot carry any (no parsing needed)."""
    if identifier_parameters(settings.email_parameters).search(url) is None:
        return None
    return identifiers_from_url(url, settings.email_parameters)
