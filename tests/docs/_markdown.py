"""Shell examples in Markdown, and how the docs tests find and check them.

Convention (documented in README.md and docs/operator.md): every fenced block whose language
is ``console``, ``sh``, ``bash`` or ``shell`` is preceded by a marker comment:

- ``<!-- docs-test: run [before=HOOK[:ARG...]] -->``: a ``console`` block, executed. Lines
  starting with ``$ `` are commands (a trailing ``\\`` continues one); the lines after a
  command are output it must print, in order, not necessarily consecutively. ``...`` inside
  a line matches any text; a line of only ``...`` stands for omitted lines. Runs of spaces
  count as one (table columns vary in width). Every command must exit 0 (show an expected
  failure with ``; echo "exit status $?"``). ``before=`` names a hook the test runs first
  (e.g. waiting for a delivery).
- ``<!-- docs-test: provided: NAME -->``: the test starts the equivalent itself (the Klaviyo
  mock, ``make run``), with free ports.
- ``<!-- docs-test: skip: REASON -->``: not executed, for the stated reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

SHELL_LANGUAGES: Final = frozenset({"console", "sh", "bash", "shell"})
_FENCE: Final = re.compile(r"^```(\S*)\s*$")
_MARKER: Final = re.compile(r"^<!--\s*docs-test:\s*(run|provided|skip)\b:?\s*(.*?)\s*-->$")

Mode = Literal["run", "provided", "skip", "unmarked"]


@dataclass(frozen=True, slots=True)
class Command:
    """One ``$`` command of a console block and the output lines it must print."""

    text: str
    expected: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Block:
    """A fenced shell block and its marker."""

    path: Path
    line: int
    language: str
    body: str
    mode: Mode
    argument: str = ""
    hooks: tuple[str, ...] = field(default=())

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    def commands(self) -> list[Command]:
        """The commands of a console block with their expected output."""
        commands: list[Command] = []
        lines = self.body.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.startswith("$ "):
                if commands or line.strip():
                    raise ValueError(f"{self.where}: output before the first command: {line!r}")
                i += 1
                continue
            parts = [line[2:]]
            while parts[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                parts.append(lines[i])
            i += 1
            expected: list[str] = []
            while i < len(lines) and not lines[i].startswith("$ "):
                expected.append(lines[i])
                i += 1
            commands.append(Command("\n".join(parts), tuple(e for e in expected if e.strip())))
        return commands


def shell_blocks(path: Path) -> list[Block]:
    """Every fenced shell block of ``path`` with the marker right above it (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        language, start = fence.group(1), i
        end = start + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if language in SHELL_LANGUAGES:
            mode: Mode = "unmarked"
            argument = ""
            hooks: tuple[str, ...] = ()
            previous = start - 1
            while previous >= 0 and not lines[previous].strip():
                previous -= 1
            marker = _MARKER.match(lines[previous].strip()) if previous >= 0 else None
            if marker is not None:
                mode = marker.group(1)  # type: ignore[assignment]  # the regex allows only Mode values
                argument = marker.group(2)
                if mode == "run":
                    hooks = tuple(
                        word.removeprefix("before=")
                        for word in argument.split()
                        if word.startswith("before=")
                    )
            blocks.append(
                Block(
                    path,
                    start + 1,
                    language,
                    "\n".join(lines[start + 1 : end]),
                    mode,
                    argument,
                    hooks,
                )
            )
        i = end + 1
    return blocks


def _line_pattern(expected: str) -> re.Pattern[str]:
    pieces = [re.escape(_squash(piece)) for piece in expected.strip().split("...")]
    return re.compile(".*?".join(pieces), re.DOTALL)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def output_mismatch(expected: tuple[str, ...], actual: str) -> str | None:
    """Why ``actual`` does not show ``expected`` (see the module docstring), or None."""
    lines = [_squash(line).strip() for line in actual.splitlines()]
    position = 0
    for wanted in expected:
        if wanted.strip() == "...":
            continue
        pattern = _line_pattern(wanted)
        while position < len(lines) and pattern.fullmatch(lines[position]) is None:
            position += 1
        if position == len(lines):
            return f"expected output line not found (in order): {wanted.strip()!r}"
        position += 1
    return None
