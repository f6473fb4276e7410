#!/usr/bin/env python3
"""Check that every reference in the documentation and in code comments resolves.

Scanned:
- every `*.md` file of the repository (hidden and build directories skipped): Markdown links
  `[text](path)`, `[text](path#anchor)`, `[text](#anchor)` and `[label]: path`, resolved
  relative to the file as a renderer would; the anchor must be a heading of the target;
- the docstrings and comments of the Python files under gateway_pkg/, tools/, bench/,
  scripts/ and tests/, and the `#` comments of their other text files (shell scripts, ...);
- in all of these, mentions of Markdown files (`docs/<page>.md`, `docs/<page>.md#<anchor>`,
  `../shared/reference/<file>.md`), resolved relative to the file or to the repository
  root. A bare `<name>.md` that exists in neither place points at nothing and is reported,
  and so is an absolute path to a Markdown file (it names one machine). `../shared/...`
  resolves only where that directory exists next to the repository (it does in CI);
- section references: `facts §N` with no document named is reported; `<file>.md §N.M` must
  name a numbered heading of that file (`### N.M ...`); ranges `§N.M-§N.K` check both ends.

Prints one `file:line: reference` per broken reference and exits 1 when there is any.

    .venv/bin/python tools/check_doc_refs.py [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Where code comments and docstrings are read (relative to the root).
CODE_DIRS = ("gateway_pkg", "tools", "bench", "scripts", "tests")
# Non-Python files whose `#` comments are read inside CODE_DIRS.
COMMENT_SUFFIXES = frozenset({".sh", ".bash", ".conf", ".service", ".cfg", ".toml", ".yml", ".yaml", ".ini"})
SKIP_DIRS = frozenset({"build", "dist", "node_modules", "__pycache__", "venv"})

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"""<a\s+[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_NUMBERED = re.compile(r"^§?\s*(\d+(?:\.\d+)*)\.?(?:\s|$)")
# A mention of a Markdown file: path segments of word characters, dots and dashes.
_MD_PATH = re.compile(r"(?<![\w/.\-])((?:[\w.\-]+/)*[\w.\-]*\w\.md)(?:#([\w\-]+))?(?![\w/\-])")
_ABSOLUTE_MD = re.compile(r"(?<![\w/.:\-])(/(?:[\w.\-]+/)+[\w.\-]*\w\.md)(?![\w/\-])")
_SECTION_AFTER = re.compile(r"\s*§\s*(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?\s*(\d+(?:\.\d+)*))?")
_BARE_FACTS = re.compile(r"(?<![\w.\-/])facts\s+(§\s*\d+(?:\.\d+)*(?:\s*[-–]\s*§?\s*\d+(?:\.\d+)*)?)")
_FACTS_SUFFIX = re.compile(r"(§\s*\d+(?:\.\d+)*)\s+of\s+the\s+facts\b")


@dataclass(frozen=True, order=True)
class Broken:
    path: str
    line: int
    reference: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reference}"


@dataclass(frozen=True)
class Segment:
    """A stretch of text to scan: its first line in the file, and whether it is Markdown."""

    line: int
    text: str
    markdown: bool


# --- files --------------------------------------------------------------------------------


def _walk(directory: Path) -> Iterator[Path]:
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            if entry.name.startswith(".") or entry.name in SKIP_DIRS or entry.name.endswith(".egg-info"):
                continue
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def files_to_scan(root: Path) -> list[Path]:
    found = {p for p in _walk(root) if p.suffix == ".md"}
    for name in CODE_DIRS:
        directory = root / name
        if directory.is_dir():
            found.update(p for p in _walk(directory) if p.suffix == ".py" or p.suffix in COMMENT_SUFFIXES)
    return sorted(found)


# --- segments of a file -----------------------------------------------------------------------


def _blank(text: str) -> str:
    return re.sub(r"[^\n]", " ", text)


def markdown_segments(text: str) -> tuple[Segment, str]:
    """The whole file, and a copy with code fences and inline code blanked (for links)."""
    out: list[str] = []
    fence: str | None = None
    for line in text.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            out.append(_blank(line))
        elif fence is not None:
            if match and match.group(1).startswith(fence):
                fence = None
            out.append(_blank(line))
        else:
            out.append(_INLINE_CODE.sub(lambda m: _blank(m.group(0)), line))
    return Segment(1, text, True), "".join(out)


def python_segments(text: str) -> list[Segment]:
    """Docstrings (every bare string statement) and comments, consecutive comment lines joined."""
    segments: list[Segment] = []
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return comment_segments(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            source = ast.get_source_segment(text, node.value) or node.value.value
            segments.append(Segment(node.value.lineno, source, False))
    comments: list[tuple[int, str]] = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                comments.append((token.start[0], token.string))
    except (tokenize.TokenError, SyntaxError):
        pass
    segments.extend(_join_comments(comments))
    return segments


def comment_segments(text: str) -> list[Segment]:
    comments = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if stripped.startswith("#"):
            comments.append((number, stripped))
        elif " #" in line:
            comments.append((number, line[line.index(" #") + 1 :]))
    return list(_join_comments(comments))


def _join_comments(comments: list[tuple[int, str]]) -> Iterator[Segment]:
    start, last = 0, -1
    lines: list[str] = []
    for number, body in comments:
        if lines and number != last + 1:
            yield Segment(start, "\n".join(lines), False)
            lines = []
        if not lines:
            start = number
        lines.append(body)
        last = number
    if lines:
        yield Segment(start, "\n".join(lines), False)


# --- targets ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor a renderer (GitHub) gives a heading: markup dropped, lower case, dashes."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "").replace("*", "").lower().strip()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def _headings(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(anchors, section numbers) of a Markdown file."""
    anchors: set[str] = set()
    numbers: set[str] = set()
    seen: dict[str, int] = {}
    fence: str | None = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            continue
        if fence is not None:
            if match and match.group(1).startswith(fence):
                fence = None
            continue
        anchors.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if not heading:
            continue
        title = heading.group(2)
        base = slug(title)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
        number = _NUMBERED.match(title.replace("`", ""))
        if number:
            numbers.add(number.group(1))
    return frozenset(anchors), frozenset(numbers)


def _resolve(candidates: Sequence[Path]) -> Path | None:
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


def _has_anchor(target: Path, anchor: str) -> bool:
    if target.suffix != ".md" or not target.is_file():
        return False
    return anchor.lower() in _headings(target)[0]


# --- the checks -------------------------------------------------------------------------------


def _line_of(segment: Segment, offset: int) -> int:
    return segment.line + segment.text.count("\n", 0, offset)


def check_links(path: Path, segment: Segment, blanked: str) -> Iterator[tuple[int, str]]:
    for match in (*_LINK.finditer(blanked), *_REF_DEF.finditer(blanked)):
        target = match.group(1)
        if not target or _SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        if file_part:
            resolved = _resolve([path.parent / file_part])
            if resolved is None or (anchor and not _has_anchor(resolved, anchor)):
                yield _line_of(segment, match.start(1)), target
        elif anchor and not _has_anchor(path, anchor):
            yield _line_of(segment, match.start(1)), target


def _sections_missing(target: Path, first: str, last: str | None) -> list[str]:
    numbers = _headings(target)[1]
    return [n for n in (first, last) if n is not None and n not in numbers]


def check_mentions(path: Path, root: Path, segment: Segment, skip: str | None = None) -> Iterator[tuple[int, str]]:
    """Mentions of Markdown files and numbered sections, in prose, code comments or docstrings."""
    text = segment.text
    scan = text if skip is None else skip
    for match in _MD_PATH.finditer(scan):
        mention, anchor = match.group(1), match.group(2)
        resolved = _resolve([path.parent / mention, root / mention])
        reference = mention + (f"#{anchor}" if anchor else "")
        if resolved is None or (anchor and not _has_anchor(resolved, anchor)):
            yield _line_of(segment, match.start(1)), reference
            continue
        section = _SECTION_AFTER.match(text, match.end())
        if section and resolved.suffix == ".md":
            for number in _sections_missing(resolved, section.group(1), section.group(2)):
                yield _line_of(segment, match.start(1)), f"{mention} §{number}"
    for match in _ABSOLUTE_MD.finditer(scan):
        yield _line_of(segment, match.start(1)), match.group(1)
    for pattern in (_BARE_FACTS, _FACTS_SUFFIX):
        for match in pattern.finditer(text):
            yield _line_of(segment, match.start()), re.sub(r"\s+", " ", match.group(0))


def check_file(path: Path, root: Path) -> list[Broken]:
    text = path.read_text(encoding="utf-8", errors="replace")
    rel = path.relative_to(root).as_posix()
    found: set[Broken] = set()
    if path.suffix == ".md":
        segment, blanked = markdown_segments(text)
        for line, ref in check_links(path, segment, blanked):
            found.add(Broken(rel, line, ref))
        # Link targets were checked as links (relative to the file only); blank them here.
        without_links = _LINK.sub(lambda m: m.group(0)[: m.start(1) - m.start()] + _blank(m.group(1))
                                  + m.group(0)[m.end(1) - m.start():], text)
        without_links = _REF_DEF.sub(lambda m: _blank(m.group(0)), without_links)
        without_urls = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: _blank(m.group(0)), without_links)
        for line, ref in check_mentions(path, root, segment, skip=without_urls):
            found.add(Broken(rel, line, ref))
        return sorted(found)
    segments = python_segments(text) if path.suffix == ".py" else comment_segments(text)
    for segment in segments:
        for line, ref in check_mentions(path, root, segment):
            found.add(Broken(rel, line, ref))
    return sorted(found)


def find_broken(root: Path) -> list[Broken]:
    root = root.resolve()
    _headings.cache_clear()
    broken: list[Broken] = []
    for path in files_to_scan(root):
        broken.extend(check_file(path, root))
    return sorted(broken)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Report documentation references that resolve to nothing.")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository root (default: this script's repository)")
    args = parser.parse_args(argv)
    broken = find_broken(args.root)
    for item in broken:
        print(item)
    if broken:
        print(f"{len(broken)} broken reference(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
