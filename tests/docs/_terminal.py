"""A persistent bash session that runs documented commands like a reader's terminal would.

Commands run one after another in the same shell, so ``export``, ``umask`` and ``. activate``
carry over between them exactly as in the reader's terminal. Documented addresses are
replaced by the test's (free ports, a temporary ``var/``): see :class:`Substitutions`.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.docs._markdown import Block, output_mismatch

REPO: Final = Path(__file__).resolve().parents[2]

# The addresses the docs are written for (`make run`'s defaults and the mock's demo port).
DOC_FORWARDER: Final = "127.0.0.1:50051"
DOC_VAULT: Final = "127.0.0.1:8200"
DOC_MOCK: Final = "127.0.0.1:8899"
DOC_METRICS: Final = "127.0.0.1:9464"
# `var/` at the start of a word: a path under make run's data directory.
_VAR: Final = re.compile(r"(?<![\w./-])var/")


@dataclass(frozen=True, slots=True)
class Substitutions:
    """The test's real addresses for the documented ones.

    ``127.0.0.1:50051`` (forwarder), ``127.0.0.1:8200`` (OpenBao), ``127.0.0.1:8899`` (the
    Klaviyo mock), ``127.0.0.1:9464`` (metrics) and paths starting with ``var/`` are replaced;
    the shell also gets ``ELIDO_FORWARDER_TARGET``, since ``elido-fwd`` defaults to
    ``localhost:50051`` without it.
    """

    forwarder: str
    vault: str
    mock: str
    metrics: str
    data_dir: Path

    def apply(self, text: str) -> str:
        text = (
            text.replace(DOC_FORWARDER, self.forwarder)
            .replace(DOC_VAULT, self.vault)
            .replace(DOC_MOCK, self.mock)
            .replace(DOC_METRICS, self.metrics)
        )
        return _VAR.sub(lambda _: f"{self.data_dir}/", text)


@dataclass(frozen=True, slots=True)
class Result:
    """What a command did."""

    command: str
    exit_code: int
    output: str


class Terminal:
    """One ``bash`` process fed command after command; stdout and stderr go to one file each."""

    def __init__(self, workdir: Path, substitutions: Substitutions) -> None:
        self._workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._subs = substitutions
        self._count = 0
        # A clean shell: nothing from the developer's (or CI's) own Vault or forwarder settings.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VAULT_", "ELIDO_", "BAO_", "VIRTUAL_ENV"))
        }
        # elido-fwd's built-in default target is make run's address; point it at ours.
        env["ELIDO_FORWARDER_TARGET"] = substitutions.forwarder
        self._proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
            env=env,
            text=True,
            start_new_session=True,
        )

    def run(self, command: str, timeout_s: float = 30.0) -> Result:
        """Run ``command`` (documented form; substituted here) and wait for its exit status."""
        self._count += 1
        script = self._workdir / f"cmd-{self._count}.sh"
        out = self._workdir / f"out-{self._count}.txt"
        status = self._workdir / f"status-{self._count}"
        script.write_text(self._subs.apply(command) + "\n", encoding="utf-8")
        q = shlex.quote
        # Sourced, so the shell's state persists; stdin closed, as in a script, so nothing can
        # wait for typing.
        line = (
            f". {q(str(script))} > {q(str(out))} 2>&1 < /dev/null; "
            f"echo $? > {q(str(status))}.tmp; mv {q(str(status))}.tmp {q(str(status))}\n"
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(line)
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while not status.exists():
            if self._proc.poll() is not None:
                raise AssertionError(f"the shell exited while running {command!r}")
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"{command!r} did not finish within {timeout_s}s")
            time.sleep(0.02)
        return Result(command, int(status.read_text()), out.read_text(errors="replace"))

    def run_block(self, block: Block) -> list[Result]:
        """Run every command of a console block; fail on a nonzero exit or missing output."""
        results = []
        for command in block.commands():
            result = self.run(command.text)
            context = f"{block.where}: $ {command.text}\n--- output ---\n{result.output}"
            assert result.exit_code == 0, f"exit status {result.exit_code}\n{context}"
            problem = output_mismatch(
                tuple(self._subs.apply(e) for e in command.expected), result.output
            )
            assert problem is None, f"{problem}\n{context}"
            results.append(result)
        return results

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
