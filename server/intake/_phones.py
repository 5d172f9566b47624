"""Phone numbers validated and normalised to E.164, the only form Klaviyo takes.

A shape check (``+`` and 7-15 digits) lets through numbers no country assigns, and Klaviyo
refuses those: in a bulk job one such number fails every event of the job. So every number
is checked against libphonenumber's metadata (``phonenumbers``) and forwarded in E.164.

A number written without ``+`` (national form, e.g. ``(415) 555-0100``) is ambiguous: it is
read in the integration's ``default_phone_region`` and refused when that setting is empty.
"""

from __future__ import annotations

from typing import Final

import phonenumbers

MAX_PHONE_INPUT: Final = 64
REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)


def normalize_phone(value: str, region: str) -> str | None:
    """``value`` in E.164 form, or None when it is not a valid number (read in ``region``)."""
    if len(value) > MAX_PHONE_INPUT:
        return None
    try:
        number = phonenumbers.parse(value, region or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_problem(value: str, region: str) -> str:
    """Why :func:`normalize_phone` refused ``value``, for a field violation."""
    if len(value) > MAX_PHONE_INPUT:
        return f"must be at most {MAX_PHONE_INPUT} characters"
    if not value.lstrip().startswith("+") and not region:
        return (
            "has no country code: write it as +<country code><number>, or set the "
            "integration's default_phone_region"
        )
    return "is not a valid phone number (it is forwarded in E.164 form, e.g. +14155550100)"
