"""The edge ingest sidecar: takes clicks from the edge proxy, spools them durably and streams
them to the forwarder's ``StreamClicks`` with acknowledgements."""

from ._config import (
    ConfigError,
    ExtractConfig,
    FullPolicy,
    HttpConfig,
    LogConfig,
    Secret,
    SidecarConfig,
    SpoolConfig,
    StreamConfig,
    TailConfig,
    load_config,
)
from ._extract import Extracted, Extractor, Skip
from ._metrics import Metrics
from ._sidecar import Sidecar
from ._spool import Position, Spool, SpoolClosed, SpoolFull

__all__ = [
    "ConfigError",
    "ExtractConfig",
    "Extracted",
    "Extractor",
    "FullPolicy",
    "HttpConfig",
    "LogConfig",
    "Metrics",
    "Position",
    "Secret",
    "Sidecar",
    "SidecarConfig",
    "Skip",
    "Spool",
    "SpoolClosed",
    "SpoolConfig",
    "SpoolFull",
    "StreamConfig",
    "TailConfig",
    "load_config",
]
