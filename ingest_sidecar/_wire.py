"""The protobuf wire form of ``Click`` and ``StreamClicksRequest``, written directly.

Building a ``Click`` message (upb) and then serializing it cost ~2.5 µs a click, a sixth of
the sidecar's per-click work; the sidecar never reads the message back, it only needs its
bytes. The encoding here follows ``protos/elido/forwarder/v1/forwarder.proto`` field by field
(proto3: a string or number field at its default is left out; a sub-message that is set is
written even when empty; a map entry carries its key and value even when empty, as upb
writes them). ``tests/sidecar/test_wire.py`` checks the bytes against the generated
``forwarder_pb2`` messages, for generated inputs.

Wire format: a field is ``varint(field_number << 3 | wire_type)`` then its value; wire type
0 is a varint, 2 a length-delimited value (``varint(length)`` then the bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

_UINT64: Final = (1 << 64) - 1
# varint(n) for n < 128 is the byte n itself: precomputed for the common short fields.
_ONE_BYTE: Final = tuple(bytes((n,)) for n in range(128))

# Tags (field number << 3 | wire type) of the fields written here.
# Click
_CLICK_ID: Final = b"\x0a"  # 1, string
_WORKSPACE_ID: Final = b"\x12"  # 2, string
_CLICK_TIME: Final = b"\x1a"  # 3, google.protobuf.Timestamp
_LINK_ID: Final = b"\x22"  # 4, string
_SHORT_URL: Final = b"\x2a"  # 5, string
_DESTINATION_URL: Final = b"\x32"  # 6, string
_UTM_PARAMETERS: Final = b"\x3a"  # 7, map<string, string>
_IDENTIFIERS: Final = b"\x42"  # 8, ProfileIdentifiers
_USER_AGENT: Final = b"\x4a"  # 9, string
_REFERRER: Final = b"\x52"  # 10, string
# google.protobuf.Timestamp
_SECONDS: Final = b"\x08"  # 1, int64
_NANOS: Final = b"\x10"  # 2, int32
# ProfileIdentifiers: email 1, phone_number 2, external_id 3, kx 4 (strings)
_EMAIL: Final = b"\x0a"
_PHONE: Final = b"\x12"
_EXTERNAL_ID: Final = b"\x1a"
_KX: Final = b"\x22"
# A map entry: key 1, value 2 (strings)
_KEY: Final = b"\x0a"
_VALUE: Final = b"\x12"
# StreamClicksRequest: batch_id 1 (uint64), clicks 2 (repeated Click); its trace_context (3)
# is written by _tracing.py, only when tracing is on
_BATCH_ID: Final = b"\x08"
_CLICKS: Final = b"\x12"


def varint(value: int) -> bytes:
    """The base-128 varint of ``value``; a negative one as its 64-bit two's complement
    (10 bytes), as protobuf writes negative ``int32`` and ``int64`` values."""
    # Unrolled up to 5 bytes (every timestamp until 3058, every nanos value): a loop costs
    # twice as much.
    if value < 0x80:
        if value >= 0:
            return _ONE_BYTE[value]
    elif value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    elif value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    elif value < 0x10000000:
        return bytes(
            (value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21)
        )
    elif value < 0x800000000:
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28,
            )
        )
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, data: bytes) -> bytes:
    size = len(data)
    return tag + (_ONE_BYTE[size] if size < 128 else varint(size)) + data


def _string(tag: bytes, text: str) -> bytes:
    """A string field, or nothing for "" (proto3 leaves defaults out)."""
    if not text:
        return b""
    data = text.encode()
    size = len(data)
    return tag + (_ONE_BYTE[size] if size < 128 else varint(size)) + data


def timestamp(seconds: int, nanos: int) -> bytes:
    """A ``google.protobuf.Timestamp``'s fields."""
    out = _SECONDS + varint(seconds) if seconds else b""
    if nanos:
        out += _NANOS + varint(nanos)
    return out


def string_map(tag: bytes, items: Iterable[tuple[str, str]]) -> bytes:
    """The entries of a ``map<string, string>`` field ``tag``, in ``items``' order."""
    return b"".join(
        _delimited(tag, _delimited(_KEY, key.encode()) + _delimited(_VALUE, value.encode()))
        for key, value in items
    )


class ClickEncoder:
    """Writes ``Click`` messages; remembers the encoding of values that recur.

    Most fields of a click repeat from click to click (the workspace, link, short URL, user
    agent, referrer, UTM parameters, the current second): their encoded bytes are looked up
    instead of encoded again. Each cache holds at most ``CACHE_ENTRIES`` values of at most
    ``CACHE_CHARS`` characters, and is emptied when full (a few hundred KB at most).
    """

    CACHE_ENTRIES: Final = 256
    CACHE_CHARS: Final = 256

    __slots__ = ("_caches", "_entries", "_seconds", "_seconds_bytes")

    def __init__(self) -> None:
        # Per tag: text -> encoded field.
        self._caches: dict[bytes, dict[str, bytes]] = {
            tag: {} for tag in (_WORKSPACE_ID, _LINK_ID, _SHORT_URL, _USER_AGENT, _REFERRER)
        }
        # (key, value) -> encoded utm_parameters entry.
        self._entries: dict[tuple[str, str], bytes] = {}
        self._seconds = 0
        self._seconds_bytes = b""

    def _cached(self, tag: bytes, text: str) -> bytes:
        cache = self._caches[tag]
        data = cache.get(text)
        if data is None:
            data = _string(tag, text)
            if len(text) <= self.CACHE_CHARS:
                if len(cache) >= self.CACHE_ENTRIES:
                    cache.clear()
                cache[text] = data
        return data

    def click(
        self,
        click_id: str,
        workspace_id: str,
        seconds: int,
        nanos: int,
        link_id: str,
        short_url: str,
        destination_url: str,
        utm_parameters: Mapping[str, str],
        email: str,
        phone_number: str,
        external_id: str,
        kx: str,
        user_agent: str,
        referrer: str,
    ) -> bytes:
        """A ``Click`` with ``click_time`` and ``identifiers`` set (as the extractor sets
        them); ``utm_parameters`` in its iteration order (a map's order on the wire carries no
        meaning).

        Raises UnicodeEncodeError for a string with lone surrogates, as protobuf does.
        """
        if seconds != self._seconds or not self._seconds_bytes:
            self._seconds = seconds
            self._seconds_bytes = _SECONDS + varint(seconds) if seconds else b""
        time_fields = self._seconds_bytes + _NANOS + varint(nanos) if nanos else self._seconds_bytes
        entries = self._entries
        utm = []
        for item in utm_parameters.items():
            entry = entries.get(item)
            if entry is None:
                key, value = item
                entry = _delimited(
                    _UTM_PARAMETERS,
                    _delimited(_KEY, key.encode()) + _delimited(_VALUE, value.encode()),
                )
                if len(key) + len(value) <= self.CACHE_CHARS:
                    if len(entries) >= self.CACHE_ENTRIES:
                        entries.clear()
                    entries[item] = entry
            utm.append(entry)
        identifiers = (
            _string(_EMAIL, email)
            + _string(_PHONE, phone_number)
            + _string(_EXTERNAL_ID, external_id)
            + _string(_KX, kx)
        )
        cached = self._cached
        return b"".join(
            (
                _string(_CLICK_ID, click_id),
                cached(_WORKSPACE_ID, workspace_id),
                _CLICK_TIME,
                _ONE_BYTE[len(time_fields)],
                time_fields,
                cached(_LINK_ID, link_id),
                cached(_SHORT_URL, short_url),
                _string(_DESTINATION_URL, destination_url),
                *utm,
                _delimited(_IDENTIFIERS, identifiers),
                cached(_USER_AGENT, user_agent),
                cached(_REFERRER, referrer),
            )
        )


def stream_request(batch_id: int, clicks: Sequence[bytes]) -> bytes:
    """``StreamClicksRequest(batch_id, clicks)`` from already serialized clicks."""
    parts = [_BATCH_ID + varint(batch_id)] if batch_id else []
    one_byte = _ONE_BYTE
    for data in clicks:
        size = len(data)
        parts.append(_CLICKS + (one_byte[size] if size < 128 else varint(size)))
        parts.append(data)
    return b"".join(parts)
