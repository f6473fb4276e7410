"""tools/gen_role_docs.py writes each role's variable table into the role's own README."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("gen_role_docs", REPO / "tools" / "gen_role_docs.py")
assert _spec is not None and _spec.loader is not None
gen = importlib.util.module_from_spec(_spec)
sys.modules["gen_role_docs"] = gen
_spec.loader.exec_module(gen)

BEGIN = "<!-- BEGIN GENERATED VARIABLES: firezone_gateway -->"
END = "<!-- END GENERATED VARIABLES: firezone_gateway -->"


@pytest.fixture
def roles(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "roles" / "firezone_gateway", tmp_path / "roles" / "firezone_gateway")
    return tmp_path / "roles"


def test_the_role_readme_is_current() -> None:
    assert gen.main(["--check", "--roles", str(REPO / "roles")]) == 0


def test_default_target_is_the_roles_own_readme(roles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = roles / "firezone_gateway" / "README.md"
    head, rest = readme.read_text().split(BEGIN)
    readme.write_text(f"{head}{BEGIN}\nstale\n{END}{rest.split(END)[1]}")
    assert gen.main(["--check", "--roles", str(roles)]) == 1
    assert capsys.readouterr().out.strip() == f"{readme} is out of date: run tools/gen_role_docs.py (make docs-ansible)"
    assert gen.main(["--roles", str(roles)]) == 0
    assert "stale" not in readme.read_text()
    assert "| `firezone_gateway_version` | str | `0.1.0` |" in readme.read_text()
    assert gen.main(["--check", "--roles", str(roles)]) == 0


def test_a_readme_without_markers_is_one_clear_line(roles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (roles / "firezone_gateway" / "README.md").write_text("# firezone_gateway\n")
    assert gen.main(["--check", "--roles", str(roles)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gen_role_docs: {roles}/firezone_gateway/README.md: markers for firezone_gateway not found")


def test_an_explicit_document_still_works(roles: Path, tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{BEGIN}\n{END}\noutro\n")
    assert gen.main(["--doc", str(doc), "--roles", str(roles)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| `firezone_gateway_token` | str | `\"\"` | main | Gateway token from the portal" in text
    # The rules tables are filled only where their markers are.
    assert "GENERATED RULES" not in text


def test_the_rules_tables_come_from_the_generated_rules(roles: Path) -> None:
    readme = roles / "firezone_gateway" / "README.md"
    text = readme.read_text()
    assert "| `firezone_gateway_log_level` | `RUST_LOG` | must be a log level (trace, debug, info, warn" in text
    assert "| `FIREZONE_UDP_PORT` | must be a port number 0-65535 |" in text
    # Names the role writes from its own variables are not offered to extra_env.
    assert "\n| `RUST_LOG` |" not in text
    rules = roles / "firezone_gateway" / "vars" / "settings_rules.yml"
    rules.write_text(rules.read_text().replace("must be a port number 0-65535", "must be a port"))
    assert gen.main(["--check", "--roles", str(roles)]) == 1
    assert gen.main(["--roles", str(roles)]) == 0
    assert "| `FIREZONE_UDP_PORT` | must be a port |" in readme.read_text()


def test_the_role_readme_needs_the_rules_markers(roles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = roles / "firezone_gateway" / "README.md"
    readme.write_text(readme.read_text().replace("<!-- BEGIN GENERATED RULES: firezone_gateway -->\n", ""))
    assert gen.main(["--check", "--roles", str(roles)]) == 1
    assert "markers for firezone_gateway not found" in capsys.readouterr().err
