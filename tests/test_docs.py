"""Every rule the code cites is written down in docs/.

Comments cite checklist items (``TUS-PATCH-10``) of docs/tus-checklist.md and sections
(``docs/notion-contract.md §7.3``) and §12 rules of docs/notion-contract.md. A citation is
only worth something if a reader can look it up, so each one must be *defined* there: an id
by a list item or heading that starts with it, a section by a heading (``## §7``,
``### §7.3``) or a list item that starts with it (``- **§10.12 …``), a rule by a numbered item
of §12. In the Notion modules and their tests a bare ``§N`` and "rule N" mean the contract
too. The checklist's references to tests must name tests that exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONTRACT = DOCS / "notion-contract.md"
CHECKLIST = DOCS / "tus-checklist.md"
# Where citations live; a folder that does not exist (yet) is skipped.
SCANNED = ("protocol", "gateway", "notion_sink", "tus_client", "fake-notion", "tests", "bench")
# Where a bare "§N" or "rule N" can only mean the Notion contract.
NOTION_SCOPES = ("notion_sink", "fake-notion", "tests/notion")
SUFFIXES = {".py", ".md", ".sh", ".mjs", ".js", ".toml", ".yml", ".yaml", ".cfg", ".txt"}

ITEM_ID = re.compile(r"TUS-[A-Z]+-\d+")
SECTION = r"§(\d+(?:\.\d+)*)"
CONTRACT_CITATION = re.compile(r"docs/notion-contract\.md\s+(" + SECTION + r"[^\n]*)")
BARE_SECTION = re.compile(SECTION)
RULES = re.compile(r"\b[Rr]ules? (\d+(?:-\d+)?(?:(?:, ?| and )\d+(?:-\d+)?)*)")

LIST_OR_HEADING = r"^\s*(?:#+|[-*+]|\d+\.)\s+(?:\*\*)?"
DEFINED_ID = re.compile(LIST_OR_HEADING + r"(TUS-[A-Z]+-\d+)\b", re.MULTILINE)
DEFINED_SECTION = re.compile(r"^\s*(?:#+|[-*+])\s+(?:\*\*)?" + SECTION, re.MULTILINE)
NUMBERED_ITEM = re.compile(r"^(\d+)\.\s", re.MULTILINE)
TEST_REFERENCE = re.compile(r"`(?:(tests/[\w/]+\.py)::)?(test_\w+)`")


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        # os.walk, pruned: the node_modules folders under tests/ hold tens of thousands of files.
        for folder, dirs, files in os.walk(ROOT / top):
            dirs[:] = sorted(d for d in dirs if d not in ("node_modules", "__pycache__")
                             and not d.startswith("."))
            for name in sorted(files):
                if Path(name).suffix in SUFFIXES:
                    yield Path(folder, name)


def _lines() -> Iterator[tuple[str, int, str]]:
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            yield rel, number, line


def _in_notion_scope(rel: str) -> bool:
    return any(rel == s or rel.startswith(s + "/") for s in NOTION_SCOPES)


def _numbers(spec: str) -> Iterator[int]:
    """``"1-4, 27-28"`` -> 1, 2, 3, 4, 27, 28."""
    for part in re.split(r", ?| and ", spec):
        low, _, high = part.partition("-")
        yield from range(int(low), int(high or low) + 1)


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))


def _contract_rules() -> set[int]:
    text = CONTRACT.read_text(encoding="utf-8")
    section = re.search(r"^## §12\b.*?(?=^## §|\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "docs/notion-contract.md has no §12"
    return {int(n) for n in NUMBERED_ITEM.findall(section.group(0))}


def test_every_cited_checklist_id_is_defined() -> None:
    defined = set(DEFINED_ID.findall(_docs_text()))
    missing = [f"{rel}:{n}: {item}" for rel, n, line in _lines()
               for item in ITEM_ID.findall(line) if item not in defined]
    assert not missing, "checklist ids cited but not defined in docs/:\n" + "\n".join(missing)


def test_every_cited_contract_section_and_rule_is_defined() -> None:
    text = CONTRACT.read_text(encoding="utf-8")
    sections = set(DEFINED_SECTION.findall(text))
    rules = _contract_rules()
    missing: list[str] = []
    for rel, n, line in _lines():
        cited: list[str] = []
        for match in CONTRACT_CITATION.finditer(line):
            cited += BARE_SECTION.findall(match.group(1))
        if _in_notion_scope(rel):
            cited += BARE_SECTION.findall(line)
            missing += [f"{rel}:{n}: rule {r}" for spec in RULES.findall(line)
                        for r in _numbers(spec) if r not in rules]
        missing += [f"{rel}:{n}: docs/notion-contract.md §{s}"
                    for s in dict.fromkeys(cited) if s not in sections]
    assert not missing, ("Notion contract sections or rules cited but not defined in "
                         "docs/notion-contract.md:\n" + "\n".join(missing))


def test_nothing_cites_documents_outside_the_repository() -> None:
    # The research notes the docs were written from are not shipped; a reader cannot open them.
    outside = re.compile(r"(?<![\w/-])(?:notion-api|tus-protocol|design|style)\.md\b|/work/shared")
    found = [f"{rel}:{n}: {line.strip()}" for rel, n, line in _lines()
             if outside.search(line) and rel != "tests/test_docs.py"]
    assert not found, "cite docs/ instead:\n" + "\n".join(found)


def test_the_checklist_defines_each_id_once() -> None:
    ids = DEFINED_ID.findall(CHECKLIST.read_text(encoding="utf-8"))
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert ids and not repeated, f"defined more than once: {repeated}"


def test_tests_named_in_the_checklist_exist() -> None:
    missing = []
    for path, name in TEST_REFERENCE.findall(CHECKLIST.read_text(encoding="utf-8")):
        where = ROOT / (path or "tests/gateway/test_checklist.py")
        if not re.search(rf"^(?:async )?def {name}\(", where.read_text(encoding="utf-8"),
                         re.MULTILINE):
            missing.append(f"{path or 'tests/gateway/test_checklist.py'}::{name}")
    assert not missing, "docs/tus-checklist.md names tests that do not exist:\n" + "\n".join(
        missing)
