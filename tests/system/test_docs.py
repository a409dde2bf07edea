"""The docs stay true: generated regions are current, the README stays a front door, and every link resolves."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_regions_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    gen = generator()
    assert gen.main(["--check"]) == 0, f"stale, run `make docs`: {capsys.readouterr().err}"


def test_check_mode_names_a_stale_file_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gen = generator()
    for name in [*gen.REGIONS, *gen.FILES]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    page = tmp_path / "docs" / "operations.md"
    edited = page.read_text().replace("| `partitions` | `3` |", "| `partitions` | `4` |")
    page.write_text(edited)
    assert gen.main(["--check"], root=tmp_path) == 1
    assert "docs/operations.md" in capsys.readouterr().err
    assert page.read_text() == edited
    assert gen.main([], root=tmp_path) == 0  # rewrite mode repairs it
    assert page.read_text() == (ROOT / "docs" / "operations.md").read_text()


def test_a_missing_region_is_an_error_not_a_silent_pass(tmp_path: Path) -> None:
    gen = generator()
    with pytest.raises(ValueError, match="no region 'settings'"):
        gen.render("# Operations\n", gen.REGIONS["docs/operations.md"], "docs/operations.md")


def test_readme_is_a_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"


def _links(text: str) -> list[str]:
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)  # fenced code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"^(```|~~~).*?^\1", "", page.read_text(), flags=re.S | re.M)
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    bad = []
    for link in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if path.startswith("/") or not target.is_relative_to(ROOT):
            bad.append(f"{link}: points outside the repository")
        elif not target.exists():
            bad.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            bad.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not bad, bad


def test_link_check_sees_outside_and_missing_targets() -> None:
    links = _links("[a](../shared/notes.md) `[b](x.md)` [c](docs/none.md#x)\n```\n[d](y.md)\n```\n")
    assert links == ["../shared/notes.md", "docs/none.md#x"]
