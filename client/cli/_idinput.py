"""Reading the identifiers of a person to erase from stdin or a file, never from arguments.

Arguments end up in shell history, ``ps`` output and audit logs of the operator's machine;
personal data must not. One identifier a line, typed by a prefix::

    email:ada@example.com
    phone:+14155550100
    external_id:crm-42
    kx:abcDEF123.Xy12Zz

Blank lines and lines starting with ``#`` are skipped. Errors name the line, never its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

from client.cli._exit import CliError, ExitCode

PREFIXES: Final = {
    "email": "emails",
    "phone": "phone_numbers",
    "external_id": "external_ids",
    "kx": "kxs",
}


@dataclass
class PersonIdentifiers:
    """The identifiers read, by kind (in the order read)."""

    emails: list[str] = field(default_factory=list)
    phone_numbers: list[str] = field(default_factory=list)
    external_ids: list[str] = field(default_factory=list)
    kxs: list[str] = field(default_factory=list)

    def count(self) -> int:
        """How many identifiers there are."""
        return len(self.emails) + len(self.phone_numbers) + len(self.external_ids) + len(self.kxs)


def read_identifiers(source: str, *, stdin: TextIO) -> PersonIdentifiers:
    """The identifiers in ``source`` (``-`` for stdin, else a path)."""
    if source == "-":
        if stdin.isatty():
            raise CliError(
                "refusing to read identifiers from a terminal: pipe them in or name a file "
                "(--identifiers-file)",
                ExitCode.USAGE,
            )
        text, origin = stdin.read(), "stdin"
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CliError(f"cannot read {path}: {reason}", ExitCode.USAGE) from None
        origin = str(path)
    found = PersonIdentifiers()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, sep, value = line.partition(":")
        attribute = PREFIXES.get(kind.strip().lower()) if sep else None
        if attribute is None:
            raise CliError(
                f"invalid input: {origin} line {number} needs a prefix: "
                + ", ".join(f"{p}:" for p in PREFIXES),
                ExitCode.INVALID_INPUT,
            )
        if not value.strip():
            raise CliError(
                f"invalid input: {origin} line {number} has no value after {kind.strip()}:",
                ExitCode.INVALID_INPUT,
            )
        getattr(found, attribute).append(value.strip())
    if not found.count():
        raise CliError(f"invalid input: {origin} holds no identifiers", ExitCode.INVALID_INPUT)
    return found
