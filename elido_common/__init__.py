"""Code shared by the server and the edge sidecar, with no dependency beyond the standard library.

The sidecar installs without the server (``pip install '.[sidecar]'``), so what both must agree
on — the syntax of ids and profile identifiers — lives here rather than in ``server/``.
"""
