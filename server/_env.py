"""Reading settings from the environment: one mechanism for every part of the server.

Each part's settings are parsed by a function taking an :class:`Env` and returning that
part's frozen dataclass. :class:`Env` never raises for a bad value: it records one line per
problem, naming the variable, and returns the default so that parsing carries on and every
problem is reported at once (``elido-forwarder check`` prints them all; start-up logs them all
and exits 2). :meth:`Env.raise_problems` ends the parse.

A secret setting ``NAME`` can instead be given as a file with ``NAME_FILE`` (how Kubernetes,
systemd credentials and Docker secrets deliver secrets): the file's content, without the
trailing newline, is the value. Setting both is an error; so is an empty or unreadable file.
The problem lines never quote a secret's value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final, TypeVar

FILE_SUFFIX: Final = "_FILE"
_LISTEN: Final = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):(?P<port>[0-9]{1,5})")
_T = TypeVar("_T", bound=str)


class ConfigError(ValueError):
    """One or more settings are missing or malformed; each line names its variable."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class Env:
    """A view of the environment that collects problems instead of raising at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def problem(self, message: str) -> None:
        """Record a problem; ``message`` starts with the variable's name."""
        self.problems.append(message)

    def raise_problems(self) -> None:
        """Raise :class:`ConfigError` with every problem recorded so far, if any."""
        if self.problems:
            raise ConfigError(self.problems)

    def is_set(self, name: str) -> bool:
        return bool(self._env.get(name, "").strip())

    def text(self, name: str, default: str = "") -> str:
        """The value with surrounding blanks removed; unset or blank gives ``default``."""
        value = self._env.get(name, "").strip()
        return value or default

    def optional(self, name: str) -> str | None:
        return self.text(name) or None

    def number(self, name: str, default: float, *, minimum: float | None = None) -> float:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problem(f"{name} must be a number, got {raw!r}")
            return default
        if value != value or value in (float("inf"), float("-inf")):
            self.problem(f"{name} must be a finite number, got {raw!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(f"{name} must be at least {minimum:g}, got {raw!r}")
            return default
        return value

    def positive(self, name: str, default: float) -> float:
        value = self.number(name, default)
        if value <= 0:
            self.problem(f"{name} must be positive, got {self.text(name)!r}")
            return default
        return value

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self.text(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.problem(f"{name} must be a whole number, got {raw!r}")
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = (
                f"between {minimum} and {maximum}"
                if minimum is not None and maximum is not None
                else f"at least {minimum}"
                if minimum is not None
                else f"at most {maximum}"
            )
            self.problem(f"{name} must be {bounds}, got {raw!r}")
            return default
        return value

    def choice(self, name: str, default: _T, choices: Iterable[_T]) -> _T:
        """One of ``choices`` (compared case-insensitively), or ``default`` when unset."""
        options = tuple(choices)
        raw = self.text(name)
        if not raw:
            return default
        for option in options:
            if raw.lower() == option.lower():
                return option
        self.problem(f"{name} must be one of {', '.join(options)}, got {raw!r}")
        return default

    def path(self, name: str) -> Path | None:
        raw = self.text(name)
        return Path(raw) if raw else None

    def listen(self, name: str, default: str, *, default_host: str = "", unix: bool = False) -> str:
        """A ``host:port`` address (``[v6]:port`` too); ``:port`` gets ``default_host``.
        With ``unix``, gRPC's ``unix:PATH`` socket addresses are accepted as well."""
        raw = self.text(name)
        if not raw:
            return default
        if unix and raw.startswith("unix:") and len(raw) > len("unix:"):
            return raw
        match = _LISTEN.fullmatch(raw)
        if match is None or int(match["port"]) > 65535:
            self.problem(f"{name} must be host:port with a port from 0 to 65535, got {raw!r}")
            return default
        if not match["host"] and default_host:
            return f"{default_host}:{match['port']}"
        return raw

    def secret(self, name: str) -> str | None:
        """``name`` or the content of the file named by ``name_FILE``; None if neither."""
        file_name = name + FILE_SUFFIX
        inline, path = self.text(name), self.text(file_name)
        if inline and path:
            self.problem(f"{name} and {file_name} are both set; set only one")
            return None
        if inline:
            return inline
        if not path:
            return None
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.problem(f"{file_name}: cannot read {path}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problem(f"{file_name}: {path} is not UTF-8 text")
            return None
        if not value:
            self.problem(f"{file_name}: {path} is empty")
            return None
        if "\n" in value:
            self.problem(f"{file_name}: {path} holds more than one line")
            return None
        return value
