"""REQUIRE_INTEGRATION=1 (set by CI) turns a skipped integration test into a failure.

Each test runs a tiny suite under tests/conftest.py (copied in, so the hook under test is
the real one) with and without the variable, and looks at what pytest reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
INI = """[pytest]
markers =
    integration: real processes
    netns: network namespaces
"""

SUITE = {
    # A fixture skips, as the namespace lab does when root is missing: a setup-time skip.
    "integration/test_lab.py": """
import pytest

@pytest.fixture
def lab():
    pytest.skip("needs root for network namespaces")

def test_tunnel(lab):
    pass
""",
    # Marked integration outside tests/integration, skipping in its body.
    "test_marked.py": """
import pytest

@pytest.mark.integration
def test_marked():
    pytest.skip("the moon is not aligned")
""",
    # No mark, but skips for lack of what the integration tests need.
    "test_tools.py": """
import pytest

@pytest.mark.skipif(True, reason="wireguard-go is not installed")
def test_needs_wireguard_go():
    pass
""",
    # Neither: an ordinary skip stays a skip, a pass a pass, an xfail an xfail.
    "test_plain.py": """
import pytest

def test_passes():
    pass

@pytest.mark.skip(reason="not on this platform")
def test_plain_skip():
    pass

@pytest.mark.integration
@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
""",
}


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # the inner runs need no plugins
    pytester.makeini(INI)
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    (pytester.path / "integration").mkdir()
    for name, text in SUITE.items():
        (pytester.path / name).write_text(text)
    return pytester


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_the_switch_skips_stay_skips(suite, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("REQUIRE_INTEGRATION", raising=False)
    else:
        monkeypatch.setenv("REQUIRE_INTEGRATION", value)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*needs root for network namespaces*"])


def test_with_the_switch_integration_skips_fail_with_their_reason(suite, monkeypatch):
    monkeypatch.setenv("REQUIRE_INTEGRATION", "1")
    result = suite.runpytest("-rA")
    # Setup-time skips (fixture, skipif) become setup errors, the body's skip a failure.
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, failed=1, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random([
        "ERROR integration/test_lab.py::test_tunnel*",
        "FAILED test_marked.py::test_marked*",
        "ERROR test_tools.py::test_needs_wireguard_go*",
        "SKIPPED*not on this platform*",
        "*REQUIRE_INTEGRATION=1: an integration test may not be skipped (skip reason: needs root for network*",
        "*REQUIRE_INTEGRATION=1: an integration test may not be skipped (skip reason: the moon is not aligned)*",
        "*REQUIRE_INTEGRATION=1: an integration test may not be skipped (skip reason: wireguard-go is not inst*",
    ])


def test_with_the_switch_a_module_skipped_at_import_fails(suite, monkeypatch):
    (suite.path / "integration" / "test_module.py").write_text(
        "import pytest\npytest.skip('unbound is not installed', allow_module_level=True)\n"
    )
    monkeypatch.delenv("REQUIRE_INTEGRATION", raising=False)
    suite.runpytest("integration/test_module.py").assert_outcomes(skipped=1)

    monkeypatch.setenv("REQUIRE_INTEGRATION", "1")
    result = suite.runpytest("integration/test_module.py")
    result.assert_outcomes(errors=1)
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skip reason: unbound is not installed*"])
