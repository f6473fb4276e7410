"""Root conftest: with REQUIRE_INTEGRATION=1 a skipped integration test fails the run.

CI exports REQUIRE_INTEGRATION=1 (.ci/run), so a green CI cannot hide an untested data
plane behind "skipped: needs root" or "wireguard-go is not installed". A test counts as an
integration test when it is marked `integration` or `netns`, lives under
tests/integration/, or skips for a reason naming what the integration tests need (root,
network namespaces, wireguard-go, unbound, iperf3). Other skips stay skips; an expected
failure (xfail) is not a skip. Without the variable (or with REQUIRE_INTEGRATION=0) nothing
changes: a developer without root still gets a clean run with the skips listed.

A skip raised while setting a test up (a fixture's pytest.skip, a skipif mark) becomes an
error at setup, one raised in the test body a failure; both fail the run and carry the
skip's reason.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
ENV = "REQUIRE_INTEGRATION"
# What the integration tests need; a skip naming one of these hides untested data plane.
NEEDS = re.compile(r"\broot\b|netns|network namespace|wireguard-go|unbound|iperf3", re.IGNORECASE)


def integration_required() -> bool:
    return os.environ.get(ENV, "").strip() not in ("", "0")


def _under_integration_dir(path: Path) -> bool:
    return path.resolve().is_relative_to(INTEGRATION_DIR)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _is_integration(item: pytest.Item, reason: str) -> bool:
    if item.get_closest_marker("integration") or item.get_closest_marker("netns"):
        return True
    return _under_integration_dir(item.path) or bool(NEEDS.search(reason))


def _fail(report: pytest.TestReport | pytest.CollectReport, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = f"{ENV}=1: an integration test may not be skipped (skip reason: {reason})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail") and integration_required():
        reason = _skip_reason(report)
        if _is_integration(item, reason):
            _fail(report, reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    """A whole module skipped at import (pytest.skip(allow_module_level=True), importorskip)."""
    report: pytest.CollectReport = yield
    if report.skipped and integration_required():
        reason = _skip_reason(report)
        path = getattr(collector, "path", None)
        if (path is not None and _under_integration_dir(Path(path))) or NEEDS.search(reason):
            _fail(report, reason)
    return report


def pytest_configure(config: pytest.Config) -> None:
    """FIREZONE_NATIVE=off (`make test-fallback`) puts the in-process tests on the pure-Python
    checksums too; the gateways the integration tests start read it themselves (base_env)."""
    from gateway_pkg.tunnel import checksum

    checksum.select_native(os.environ.get("FIREZONE_NATIVE", "").strip().lower() or "auto")
