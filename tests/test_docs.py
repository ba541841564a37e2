"""The documentation site (docs/, mkdocs.yml): it builds with ``--strict`` (a link to a missing
page or anchor, or a page left out of the navigation, fails), and its generated reference is
what the code says (``tools/refdocs.py``)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_tool

from wlmserver.config import certificates, file
from wlmserver.config.options import build_parser
from wlmserver.matching.keys import IDENTIFIER_ATTRIBUTES, WORKLIST_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
refdocs = load_tool("refdocs")


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "conformance-statement" / "index.html").is_file()


def test_strict_means_broken_links_and_unlisted_pages_fail() -> None:
    """``--strict`` fails on what ``validation`` reports as warnings: missing anchors and
    pages, and pages that are not in the navigation."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for check in ("omitted_files", "absolute_links", "unrecognized_links", "anchors"):
        assert re.search(rf"^\s+{check}: warn$", config, re.M), check
    listed = set(re.findall(r":\s+(\S+\.md)$", config, re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert listed == pages


def test_the_generated_pages_are_what_the_code_says() -> None:
    for path, text in refdocs.pages().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is not what the code says: run python3 tools/refdocs.py"
        )


def test_the_check_mode_names_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "options.md"
    stale.write_text("# an old page\n", encoding="utf-8")
    real = refdocs.pages
    monkeypatch.setattr(refdocs, "ROOT", tmp_path)
    monkeypatch.setattr(refdocs, "pages", lambda: {stale: real()[refdocs.OPTIONS_PAGE]})
    assert refdocs.main(["--check"]) == 1
    assert "options.md: not what the code says" in capsys.readouterr().err
    assert stale.read_text(encoding="utf-8") == "# an old page\n"
    assert refdocs.main([]) == 0
    assert refdocs.main(["--check"]) == 0


def test_every_option_and_configuration_key_is_on_the_options_page() -> None:
    page = refdocs.OPTIONS_PAGE.read_text(encoding="utf-8")
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"`{option}`" in page, option
        longs = [o[2:] for o in action.option_strings if o.startswith("--")]
        if longs and longs[0] not in refdocs.NOT_IN_FILE:
            assert f"`{longs[0]} = " in page, longs[0]
    assert "`port = PORT`" in page
    for key in (*file.ALLOW_KEYS, *file.PROFILE_KEYS, *certificates.OPTION_KEYS):
        assert f"| `{key}` |" in page, key
    for table in file.TABLES:
        assert f"### `[{table}" in page, table


def _part(name: str) -> str:
    text = refdocs.CONFORMANCE_PAGE.read_text(encoding="utf-8")
    match = re.search(rf"<!-- generated: {name} -->\n(.*?)<!-- end: {name} -->", text, re.S)
    assert match, name
    return match.group(1)


def test_the_conformance_statement_has_every_worklist_key() -> None:
    matching, returned = _part("matching-keys"), _part("return-keys")
    for key in WORKLIST_KEYS:
        tag = f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})"
        assert tag in matching and tag in returned, key.keyword
    rows = [r for r in matching.splitlines() if r.startswith("| Patient ID |")]
    assert rows == [
        "| Patient ID | (0010,0020) | LO | top level | R | yes | "
        "single value, wildcards, list of values |"
    ]
    pregnancy = next(r for r in matching.splitlines() if r.startswith("| Pregnancy Status"))
    assert "| O | return key only |" in pregnancy
    for key in IDENTIFIER_ATTRIBUTES:
        assert f"({key.tag >> 16:04X},{key.tag & 0xFFFF:04X})" in returned, key.keyword


def test_the_conformance_statement_names_the_sop_classes_and_follows_ps3_2() -> None:
    text = refdocs.CONFORMANCE_PAGE.read_text(encoding="utf-8")
    for uid in ("1.2.840.10008.1.1", "1.2.840.10008.5.1.4.31", "1.2.840.10008.3.1.2.3.3"):
        assert f"`{uid}`" in _part("sop-classes"), uid
    headings = re.findall(r"^#{2,6} (\d[\d.]*) ", text, re.M)
    assert headings[:3] == ["1", "2", "3"]
    for section in ("4.1", "4.2", "4.2.1.3", "4.2.1.4", "4.3", "4.4", "6", "7", "7.1"):
        assert section in headings, section
