"""Log redaction shared by the server and the edge sidecar: keys and tokens removed, emails masked.

Dependency-free on purpose (the sidecar installs without the server): :func:`redact_secrets` has
structlog's processor signature but needs nothing from structlog, so both processes put the same
function last-but-one in their chains. A Klaviyo key or a bearer token that slips into an event
(an exception message, a header dump) is replaced before it is rendered, and emails are masked
because a click's recipient is personal data.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any, Final

_PRIVATE_KEY: Final = re.compile(r"pk_[A-Za-z0-9]{8,}")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_VAULT_TOKEN: Final = re.compile(r"\b(hvs|s|hvb|b)\.[A-Za-z0-9_-]{20,}")
_EMAIL: Final = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# An email still URL-encoded (`user%40example.com`), as a click's destination URL carries it.
_ENCODED_EMAIL: Final = re.compile(
    r"([A-Za-z0-9._+-])[A-Za-z0-9._%+-]*?%40([A-Za-z0-9.-]+\.[A-Za-z]{2,})"
)
# Keys whose values are secret whatever they look like.
SECRET_FIELDS: Final = frozenset(
    {"private_key", "api_key", "key", "token", "authorization", "secret_id", "plaintext"}
)


def scrub(text: str) -> str:
    """``text`` with private keys, bearer and Vault tokens removed and emails masked."""
    text = _PRIVATE_KEY.sub(lambda m: f"pk_…{m.group(0)[-4:]}", text)
    text = _BEARER.sub(r"\1[REDACTED]", text)
    text = _VAULT_TOKEN.sub("[REDACTED-VAULT-TOKEN]", text)
    text = _ENCODED_EMAIL.sub(r"\1***%40\2", text)
    return _EMAIL.sub(r"\1***@\2", text)


def scrub_value(value: Any) -> Any:
    """:func:`scrub` applied to every string in ``value`` (dicts, lists, anything printable)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: "[REDACTED]" if k in SECRET_FIELDS else scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered through str() later; scrub that rendering now.
    return scrub(str(value))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact keys and tokens, mask emails, in every field."""
    for field, value in list(event_dict.items()):
        event_dict[field] = "[REDACTED]" if field in SECRET_FIELDS else scrub_value(value)
    return event_dict
