"""``elido-fwd erase`` reads identifiers from a file or stdin, typed, never echoing one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from client.cli._exit import CliError, ExitCode
from client.cli._idinput import read_identifiers
from tests.client.cli_support import TtyInput


def test_typed_lines_from_a_file_with_comments_and_blanks(tmp_path: Path) -> None:
    source = tmp_path / "request.txt"
    source.write_text(
        "# request 117\n\nemail: Jane@Example.com\nPHONE:+1 415 555 0100\n"
        "external_id:crm:42\nkx:abc.Xy12Zz\nemail:j2@example.com\n"
    )
    found = read_identifiers(str(source), stdin=io.StringIO())
    assert found.emails == ["Jane@Example.com", "j2@example.com"]
    assert found.phone_numbers == ["+1 415 555 0100"]
    assert found.external_ids == ["crm:42"]  # only the first colon separates the type
    assert found.kxs == ["abc.Xy12Zz"]
    assert found.count() == 5


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("secret-4411@example.com\n", "line 1 needs a prefix"),
        ("email:a@b.co\nname:secret-4411\n", "line 2 needs a prefix"),
        ("email:   \n", "line 1 has no value"),
        ("# nothing\n\n", "holds no identifiers"),
    ],
)
def test_bad_input_names_the_line_not_the_value(text: str, problem: str) -> None:
    with pytest.raises(CliError) as caught:
        read_identifiers("-", stdin=io.StringIO(text))
    assert caught.value.exit_code == ExitCode.INVALID_INPUT
    assert problem in str(caught.value)
    assert "4411" not in str(caught.value)


def test_a_terminal_and_an_unreadable_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CliError) as caught:
        read_identifiers("-", stdin=TtyInput("email:a@b.co\n"))
    assert caught.value.exit_code == ExitCode.USAGE
    with pytest.raises(CliError) as caught:
        read_identifiers(str(tmp_path / "missing.txt"), stdin=io.StringIO())
    assert caught.value.exit_code == ExitCode.USAGE
