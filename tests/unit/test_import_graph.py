"""The package's import graph: only the wiring root may sit on top.

`gateway_pkg.app` builds every part and hands each the others through the protocols in
`gateway_pkg.interfaces`; a module that imports `app` back would make the parts depend on
the root (and, sooner or later, on each other's I/O classes).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway_pkg"
ROOT = "gateway_pkg.app"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, package_dir: Path = PACKAGE) -> set[str]:
    """Every module `path` imports, absolute and relative, as dotted names (TYPE_CHECKING too)."""
    name = module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from gateway_pkg import app` names the module in the alias.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_walker_sees_absolute_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "gateway_pkg" / "sub"
    pkg.mkdir(parents=True)
    probe = pkg / "probe.py"
    probe.write_text("import gateway_pkg.app\nfrom .. import app\nfrom gateway_pkg import app as a\n"
                     "from ..app import run\n")
    assert imported_modules(probe, tmp_path / "gateway_pkg") >= {ROOT, "gateway_pkg.app.run"}


@pytest.mark.parametrize("module", sorted(m for m in graph() if m != ROOT))
def test_no_module_but_the_wiring_root_imports_app(module):
    imports = graph()[module]
    assert ROOT not in imports and not any(name.startswith(ROOT + ".") for name in imports), (
        f"{module} imports {ROOT}: take what you need from gateway_pkg.interfaces, "
        "and let the wiring root hand it to you"
    )
