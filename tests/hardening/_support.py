"""Helpers of the hardening tests: log lines, metrics, controllable request streams."""

from __future__ import annotations

import json
import queue
import re
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.support.forwarder import ForwarderProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_lines(fwd: ForwarderProcess, event: str) -> list[dict[str, Any]]:
    out = []
    for line in fwd.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            out.append(record)
    return out


def metric(url: str, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


class Requests:
    """A request iterator the test feeds; ``close()`` half-closes the stream."""

    def __init__(self) -> None:
        self._queue: queue.Queue[pb.StreamClicksRequest | None] = queue.Queue()

    def send(self, request: pb.StreamClicksRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[pb.StreamClicksRequest]:
        while (item := self._queue.get()) is not None:
            yield item
