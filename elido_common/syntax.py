"""The syntax of ids and profile identifiers, shared by the server and the edge sidecar.

Dependency-free on purpose: the sidecar imports it, so the edge accepts exactly what the
server accepts. An identifier the sidecar let through but the server refused would get the
whole click rejected.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from typing import Final
from urllib.parse import unquote

WORKSPACE_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EVENT_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
EMAIL_PATTERN: Final = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
PHONE_PATTERN: Final = re.compile(r"\+[1-9][0-9]{6,14}")
# Klaviyo's exchange id, `<urlencoded base64-like token>.<6-char suffix>`, after URL decoding.
KX_PATTERN: Final = re.compile(r"[A-Za-z0-9+/=_-]{1,400}\.[A-Za-z0-9]{6}")
MAX_EXTERNAL_ID: Final = 256
# A UTM parameter's name, and the longest value taken from a URL.
UTM_KEY_PATTERN: Final = re.compile(r"utm_[a-z0-9_]{1,40}")
MAX_UTM_VALUE: Final = 1024


# RFC 6531 (internationalised) addresses: the ASCII rules, plus any printable non-ASCII
# character in the local part and in domain labels, which must also pass IDNA.
_NON_ASCII = "\u0080-\U0010ffff"
_UNICODE_EMAIL: Final = re.compile(
    rf"[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~{_NON_ASCII}-]{{1,64}}"
    rf"@((?:[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9{_NON_ASCII}-]{{0,61}}[A-Za-z0-9{_NON_ASCII}])?\.)+"
    rf"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9{_NON_ASCII}-]{{0,61}}[A-Za-z0-9{_NON_ASCII}])?)"
)


def is_email(value: str) -> bool:
    """True for a syntactically valid email address (at most 254 bytes).

    Internationalised addresses (``jöhn@exämple.com``, RFC 6531) are valid: the same rule
    holds whether the address arrives as a field or in a link parameter. Callers pass the
    address through :func:`normalize_email` first, so one person is one string.
    """
    if value.isascii():
        return len(value) <= 254 and EMAIL_PATTERN.fullmatch(value) is not None
    if len(value.encode()) > 254 or not value.isprintable():
        return False
    match = _UNICODE_EMAIL.fullmatch(value)
    if match is None:
        return False
    try:
        ascii_domain = match.group(1).encode("idna")
    except UnicodeError:
        return False
    return all(0 < len(label) <= 63 for label in ascii_domain.split(b"."))


def normalize_email(value: str) -> str:
    """The NFC form of an address: ``ö`` typed as one or as two code points is one address."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def _base64_text(value: str) -> str:
    padded = value + "=" * (-len(value) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            return decode(padded.encode("ascii")).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeError):
            continue
    return ""


def email_from_parameter(raw: str) -> str:
    """The email a link parameter carries, or "" if it carries none.

    Klaviyo puts the recipient into links as ``{{ email }}`` (a ``+`` then arrives as a
    space), ``{{ person.email|urlencode }}`` (sometimes encoded twice), or
    ``{{ person.email|base64_encode }}``.
    """
    value = raw.strip()
    if "%" in value:
        value = unquote(value)
    candidate = normalize_email(value.replace(" ", "+"))
    if is_email(candidate):
        return candidate
    if "@" in candidate:
        return ""
    decoded = normalize_email(_base64_text(candidate).strip())
    return decoded if is_email(decoded) else ""


def kx_from_parameter(raw: str) -> str:
    """The ``_kx`` value of a link parameter (a ``+`` mangled into a space repaired), or ""."""
    value = raw.strip().replace(" ", "+")
    return value if KX_PATTERN.fullmatch(value) else ""
