"""`make run`: a local OpenBao and the forwarder for development (`python -m server.devstack`)."""
