"""The in-memory settings hint each store keeps, shared by both backends.

Validation reads an integration's settings (email parameters, default phone region) before a
click is committed, from memory. Whether the workspace has an integration is decided in the
commit's transaction; the settings only need to be fresh enough, so: every intake
transaction refreshes the workspaces it read, and a workspace not in memory is read once
before validation (another replica may have registered it), then remembered; a workspace
found without an integration is asked again after a second at most.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from typing import Final

from server.store._records import IntegrationSettings

ABSENT_TTL_S: Final = 1.0


class SettingsCache:
    """Settings by workspace id, and the workspaces recently found without an integration."""

    def __init__(self) -> None:
        self._settings: dict[str, IntegrationSettings] = {}
        self._absent: dict[str, float] = {}

    def get(self, workspace_id: str) -> IntegrationSettings | None:
        """The settings in memory, or None."""
        return self._settings.get(workspace_id)

    def unknown(self, workspace_ids: Collection[str]) -> list[str]:
        """Those of ``workspace_ids`` worth reading from the store now."""
        now = time.monotonic()
        settings, absent = self._settings, self._absent
        return [ws for ws in workspace_ids if ws not in settings and absent.get(ws, 0.0) < now]

    def learn(self, asked: Iterable[str], found: Mapping[str, IntegrationSettings]) -> None:
        """Record what a read of ``asked`` found (absent ones included)."""
        retry_at = time.monotonic() + ABSENT_TTL_S
        for ws in asked:
            if ws in found:
                self._settings[ws] = found[ws]
                self._absent.pop(ws, None)
            else:
                self._settings.pop(ws, None)
                self._absent[ws] = retry_at
        if len(self._absent) > 10_000:  # bounded: forget the oldest refusals
            for ws in sorted(self._absent, key=self._absent.__getitem__)[:5_000]:
                del self._absent[ws]

    def set(self, workspace_id: str, settings: IntegrationSettings) -> None:
        """This process changed the settings."""
        self._settings[workspace_id] = settings
        self._absent.pop(workspace_id, None)

    def forget(self, workspace_id: str) -> None:
        """This process removed the integration."""
        self._settings.pop(workspace_id, None)
