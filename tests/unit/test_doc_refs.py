"""tools/check_doc_refs.py: every reference in the docs and in code comments resolves."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_doc_refs", ROOT / "tools" / "check_doc_refs.py")
assert _spec is not None and _spec.loader is not None
check_doc_refs = importlib.util.module_from_spec(_spec)
sys.modules["check_doc_refs"] = check_doc_refs
_spec.loader.exec_module(check_doc_refs)

def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def refs(root: Path) -> list[tuple[str, int, str]]:
    return [(b.path, b.line, b.reference) for b in check_doc_refs.find_broken(root)]


def test_the_repository_resolves() -> None:
    broken = list(check_doc_refs.find_broken(ROOT))
    assert broken == [], "\n".join(map(str, broken))


def test_a_tree_whose_references_resolve_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    write(tmp_path, {"shared/reference/facts.md": "# Facts\n## 3. Data plane\n### 3.1 TUN device\n"})
    write(repo, {
        "README.md": (
            "# Title\n"
            "See [the DNS page](docs/dns.md), [the flag](docs/dns.md#the-flag-on-and-off),\n"
            "[a heading twice](docs/dns.md#cache-1), [here](#title), [web](https://example.com/x.md),\n"
            "[a dir](docs/) and [a script](tools/run.sh).\n"
            "```sh\n[not a link](missing.md) in a fence\n```\n"
            "Inline `[not a link](gone.md)` is code. Upstream: <https://github.com/a/b/blob/main/c.md>.\n"
        ),
        "docs/dns.md": "# DNS\n## The flag: on and off\n## Cache\n## Cache\n<a name=\"custom\"></a>\n"
                       "Back to [the top](../README.md) and [custom](#custom).\n",
        "tools/run.sh": "#!/bin/sh\n# See docs/dns.md and README.md.\necho docs/none.md\n",
        "gateway_pkg/mod.py": (
            '"""Module docstring: see docs/dns.md#cache and\n'
            '../shared/reference/facts.md §3.1 (ranges §3-§3.1 too)."""\n'
            "\n"
            "# a comment naming README.md\n"
            'X = "docs/not-a-doc-reference.md"  # a code string is not documentation\n'
        ),
    })
    assert refs(repo) == []
    assert check_doc_refs.main(["--root", str(repo)]) == 0
    assert capsys.readouterr().out == ""


def test_a_tree_with_broken_references_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = write(tmp_path, {
        "README.md": (
            "# Title\n"
            "A [missing page](docs/missing.md).\n"
            "A [missing anchor](docs/dns.md#nope) and [a local one](#nowhere).\n"
            "See /work/shared/reference/performance.md and ../shared/reference/facts.md.\n"
        ),
        "docs/dns.md": "# DNS\n## Cache\n",
        "bench/README.md": "Numbers in performance.md; the section §5.1 of the facts.\n",
        "gateway_pkg/mod.py": (
            '"""Follows upstream (facts §3.2)."""\n'
            "\n"
            "\n"
            "def f() -> None:\n"
            '    """See docs/wireguard.md."""\n'
            "    # the numbers: docs/dns.md#no-such-heading and README.md §9\n"
        ),
        "scripts/run.sh": "#!/bin/sh\n# details in docs/run.md\n",
    })
    assert refs(repo) == [
        ("README.md", 2, "docs/missing.md"),
        ("README.md", 3, "#nowhere"),
        ("README.md", 3, "docs/dns.md#nope"),
        ("README.md", 4, "../shared/reference/facts.md"),
        ("README.md", 4, "/work/shared/reference/performance.md"),
        ("bench/README.md", 1, "performance.md"),
        ("bench/README.md", 1, "§5.1 of the facts"),
        ("gateway_pkg/mod.py", 1, "facts §3.2"),
        ("gateway_pkg/mod.py", 5, "docs/wireguard.md"),
        ("gateway_pkg/mod.py", 6, "README.md §9"),
        ("gateway_pkg/mod.py", 6, "docs/dns.md#no-such-heading"),
        ("scripts/run.sh", 2, "docs/run.md"),
    ]
    assert check_doc_refs.main(["--root", str(repo)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "README.md:2: docs/missing.md" in out
    assert "gateway_pkg/mod.py:1: facts §3.2" in out


def test_hidden_and_build_directories_are_skipped(tmp_path: Path) -> None:
    repo = write(tmp_path, {
        ".venv/lib/README.md": "[x](nowhere.md)\n",
        ".pytest_cache/README.md": "[x](nowhere.md)\n",
        "pkg.egg-info/README.md": "[x](nowhere.md)\n",
        "gateway_pkg/__pycache__/notes.md": "[x](nowhere.md)\n",
    })
    assert refs(repo) == []


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Configuration of `firezone-gateway`", "configuration-of-firezone-gateway"),
    ("Host setup: `firezone-gateway-init`", "host-setup-firezone-gateway-init"),
    ("Health, readiness and metrics", "health-readiness-and-metrics"),
    ("The flag: `gateway_userspace_dns_a_aaaa_records`", "the-flag-gateway_userspace_dns_a_aaaa_records"),
    ("Walkthrough: a stock WireGuard client through the gateway",
     "walkthrough-a-stock-wireguard-client-through-the-gateway"),
    ("3.1 TUN device (`linux.rs` @ [R])", "31-tun-device-linuxrs--r"),
])
def test_slugs_follow_the_renderer(heading: str, anchor: str) -> None:
    assert check_doc_refs.slug(heading) == anchor
