"""Errors raised by a store.

The tree::

    StoreError          the operation did not complete and nothing of it was committed
                        (disk full, I/O error, database locked past the busy timeout, the
                        store closed); the caller answers UNAVAILABLE with RetryInfo, which
                        is safe because every intake operation is idempotent.
"""

from __future__ import annotations


class StoreError(Exception):
    """The store could not complete an operation; nothing of it was committed."""
