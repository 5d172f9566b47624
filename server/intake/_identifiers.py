"""Profile identifiers read from a click's destination URL.

Klaviyo email links carry the recipient as a template tag in a link parameter: ``{{ email }}``
(plain, where a ``+`` arrives as a space), ``{{ person.email|urlencode }}``, or
``{{ person.email|base64_encode }}``; and ``_kx`` when "email to website tracking" is on.
Values from a URL are untrusted: an invalid one is ignored, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from elido_common.syntax import email_from_parameter, kx_from_parameter
from server.store._records import Identifiers


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
