"""The repository is self-contained: every reference points at a page, test or claim it holds."""
import re
import subprocess
from pathlib import Path

import pytest

from constructions import registry

ROOT = Path(__file__).parent.parent
TRACKED = [ROOT / p for p in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
           if p.endswith((".py", ".md", ".cfg", ".toml"))] or list(ROOT.glob("**/*.py"))
PITFALLS = ROOT / "docs" / "pitfalls.md"
SECTIONS = re.findall(r"^## (\d+)\. (.+)$", PITFALLS.read_text(), flags=re.M)


def _slug(title: str) -> str:
    """A heading's anchor as GitHub renders it."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


@pytest.mark.parametrize("path", TRACKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_a_document_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    if path.name == "test_docs.py":
        return
    for outside in ("engineering.md", "anchors-code", "claims.md sec", "claims.md §", "[MEM]", "[REC]", "[NUM]"):
        assert outside not in text, f"{path}: cites {outside!r}, which is not in this repository"
    assert not re.search(r"\b[Ii]ssue \d", text), f"{path}: cites an issue of the tracker, which is not in this repository"


@pytest.mark.parametrize("path", TRACKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pitfall_reference_names_an_item_that_exists(path):
    numbers = {int(n) for n, _ in SECTIONS}
    text = path.read_text(encoding="utf-8")
    for n in re.findall(r"pitfalls\.md #(\d+)", text) + re.findall(r"pitfall (\d+)\]", text):
        assert int(n) in numbers, f"{path}: docs/pitfalls.md has no item {n}"


@pytest.mark.parametrize("path", [p for p in TRACKED if p.suffix == ".md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_link_resolves(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path}: link to {target} points nowhere"
        if anchor and dest == PITFALLS:
            assert anchor in {f"{n}-{_slug(t)}" for n, t in SECTIONS}, f"{path}: no pitfall anchor #{anchor}"


def test_the_pitfalls_are_numbered_and_each_shows_its_evidence():
    assert [int(n) for n, _ in SECTIONS] == list(range(1, len(SECTIONS) + 1))
    claim_ids = {c.id for c in registry.claims()}
    for body in re.split(r"^## \d+\. .+$", PITFALLS.read_text(), flags=re.M)[1:]:
        evidence = body[body.index("Shown by"):]
        tests = re.findall(r"`(tests/\w+\.py)(?:::(\w+))?`", evidence)
        claims = [c for c in re.findall(r"`([a-z0-9.\-]+)`", evidence) if c in claim_ids]
        commands = re.findall(r"`(icl-verify [^`]+|bash [^`]+)`", evidence)
        assert tests or claims or commands, body[:80]
        assert re.search(r"(et al\.|Polyak|Gao, Song and Xie)\s+(19|20)\d\d", body), f"no paper named: {body[:80]}"
        for file, name in tests:
            assert (ROOT / file).exists(), file
            assert not name or f"def {name}(" in (ROOT / file).read_text(), f"{file}::{name}"
