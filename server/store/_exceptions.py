"""Errors raised by a store.

The tree::

    StoreError          the operation did not complete and nothing of it was committed
                        (disk full, I/O error, database locked past the busy timeout or
                        unreachable, the store closed); the caller answers UNAVAILABLE with
                        RetryInfo, which is safe because every intake operation is idempotent.
    └── LeaseLost       a delivery write was refused because the lease it was made under
                        changed hands (fencing); the writer must stop delivering that lease's
                        workspaces. Nothing of the write was committed.
"""

from __future__ import annotations


class StoreError(Exception):
    """The store could not complete an operation; nothing of it was committed."""


class LeaseLost(StoreError):
    """The lease a delivery write named is no longer held by its writer."""
