"""The tables a store's data lives in, as both backends name them: what a move copies.

Leases are not copied (they are held for seconds and re-taken at once), nor the migration
bookkeeping (each backend has its own).
"""

from __future__ import annotations

from typing import Final

TABLES: Final[dict[str, tuple[str, ...]]] = {
    "integrations": (
        "workspace_id", "ciphertext", "key_fingerprint", "key_version", "settings", "state",
        "state_reason", "created_at", "updated_at", "delivered_count", "anonymous_count",
        "last_delivery_at", "last_error", "last_error_at", "account",
    ),
    "outbox": (
        "event_id", "workspace_id", "kind", "source_id", "occurred_at", "created_at", "email",
        "phone_number", "external_id", "kx", "payload", "value", "currency", "status",
        "attempts", "next_attempt_at", "last_error", "failed_at",
    ),
    "clicks": (
        "workspace_id", "click_id", "email", "phone_number", "external_id", "kx", "click_time",
        "expires_at",
    ),
    "conversions": ("workspace_id", "conversion_id", "expires_at"),
    "audit_events": (
        "audit_id", "occurred_at", "action", "workspace_id", "actor", "roles",
        "client_identity", "details", "outcome",
    ),
}  # fmt: skip
