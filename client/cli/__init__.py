"""``elido-fwd``: the forwarder's command line for platform engineers (see docs/cli.md)."""
