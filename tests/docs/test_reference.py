"""The docs cannot silently drift from the code: markers, references, links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs._markdown import output_mismatch, shell_blocks
from tests.docs.conftest import repo_file

EXECUTED = [repo_file("README.md"), repo_file("docs/operator.md")]
LINKED = [*EXECUTED, repo_file("docs/architecture.md")]
_ENV_READ = re.compile(
    r"(?:env\.get|_number|_int|_path|text|number|integer|positive|choice|listen|path|secret"
    r"|optional|is_set)\(\s*(?:env,\s*)?f?\"([A-Z][A-Z0-9_]+)\""
)


@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.name)
def test_every_shell_block_says_whether_it_runs(path: Path) -> None:
    blocks = shell_blocks(path)
    assert blocks
    for block in blocks:
        assert block.mode != "unmarked", f"{block.where}: add <!-- docs-test: run|skip|provided -->"
        if block.mode == "run":
            assert block.language == "console", f"{block.where}: run blocks are `console`"
            assert block.commands(), f"{block.where}: no `$ ` command"
        else:
            assert block.argument, f"{block.where}: say why it is not run"


def test_the_readme_and_the_guide_run_examples() -> None:
    for path in EXECUTED:
        assert sum(b.mode == "run" for b in shell_blocks(path)) >= 3, path.name


def test_every_environment_variable_the_server_reads_is_in_the_guide() -> None:
    guide = repo_file("docs/operator.md").read_text()
    read: set[str] = set()
    for source in repo_file("server").rglob("*.py"):
        read.update(_ENV_READ.findall(source.read_text()))
    assert {"FORWARDER_LISTEN", "VAULT_ADDR", "KLAVIYO_BASE_URL"} <= read  # the scan works
    missing = sorted(name for name in read if f"`{name}`" not in guide)
    assert not missing, f"docs/operator.md does not document {missing}"


def test_every_metric_is_in_the_guide() -> None:
    guide = repo_file("docs/operator.md").read_text()
    metrics = re.findall(r"\"(forwarder_[a-z_]+)\"", repo_file("server/_metrics.py").read_text())
    assert len(metrics) >= 5
    assert not [m for m in metrics if f"`{m}`" not in guide]


def test_every_error_reason_is_in_the_architecture() -> None:
    architecture = repo_file("docs/architecture.md").read_text()
    reasons = re.findall(
        r'^    [A-Z_]+ = "([A-Z_]+)"$', repo_file("server/_errors.py").read_text(), re.MULTILINE
    )
    assert "VAULT_UNAVAILABLE" in reasons
    assert not [r for r in reasons if f"`{r}`" not in architecture]


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("path", LINKED, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    text = path.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        missing_anchor = (
            linked.exists()
            and bool(anchor)
            and linked.suffix == ".md"
            and anchor not in _anchors(linked.read_text())
        )
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


def test_output_matching_is_strict_about_content_and_order() -> None:
    actual = "CLICK ID      DISPOSITION\ndemo-1        queued\nsecond line 42\n"
    assert output_mismatch(("CLICK ID DISPOSITION", "demo-1 queued"), actual) is None
    assert output_mismatch(("second line ...",), actual) is None
    assert output_mismatch(("demo-1 duplicate",), actual) is not None
    assert output_mismatch(("demo-1 queued", "CLICK ID DISPOSITION"), actual) is not None
    assert output_mismatch(("demo-1",), actual) is not None  # whole lines, not fragments
