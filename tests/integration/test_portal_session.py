"""A real gateway process against a real dev portal process over loopback sockets."""

from __future__ import annotations

import os
import pwd
import re
import shutil

import pytest

from tests.procs import VENV_BIN, DevPortalProc, Proc, base_env, free_port, http, wait_for

pytestmark = pytest.mark.integration
TOKEN = "gw-token-for-tests-0123456789"


def start_gateway(tmp_path, portal, *, token=TOKEN, extra_env=None, prefix=None):
    health = free_port()
    env = base_env() | {
        "FIREZONE_TOKEN": token,
        "FIREZONE_ID": "a" * 64,
        "FIREZONE_NAME": "itest-gw",
        "FIREZONE_API_URL": portal.url,
        "HEALTH_CHECK_ADDR": f"127.0.0.1:{health}",
        "FIREZONE_NO_DATAPLANE": "1",
        "FIREZONE_HEARTBEAT_INTERVAL": "0.5",
        "RUST_LOG": "debug",
    } | (extra_env or {})
    proc = Proc([str(VENV_BIN / "firezone-gateway"), "--no-check"], env, tmp_path / f"gw-{health}.log", prefix)
    proc.health = f"http://127.0.0.1:{health}"
    return proc


def readyz(gw):
    try:
        return http("GET", gw.health + "/readyz", timeout=2)[0]
    except OSError:
        return None


@pytest.fixture
def portal(tmp_path):
    proc = DevPortalProc(tmp_path, gateway_token=TOKEN)
    yield proc
    proc.stop()


def test_join_init_heartbeats_and_clean_exit(tmp_path, portal):
    gw = start_gateway(tmp_path, portal)
    try:
        [record] = wait_for(lambda: [g for g in portal.gateways() if g["joined"]], 15, "gateway joined")
        assert record["external_id"] == "a" * 64 and record["name"] == "itest-gw"
        assert record["version"] == "1.4.17"
        wait_for(lambda: "Portal assigned tunnel addresses" in gw.output(), 10, "init handled")
        assert f"ipv4={record['ipv4']}" in gw.output()
        wait_for(lambda: portal.gateways()[0]["heartbeats"] >= 2, 10, "two heartbeats")
        assert readyz(gw) == 200
        assert http("GET", gw.health + "/healthz")[0] == 200
        status, metrics = http("GET", gw.health + "/metrics")
        assert status == 200
        assert "firezone_gateway_portal_joined 1.0" in metrics
    finally:
        code = gw.stop()
    assert code == 0
    out = gw.output()
    assert "Goodbye!" in out and TOKEN not in out and "Traceback" not in out
    assert "token=<redacted>" in out  # the debug line shows the URL, scrubbed
    assert TOKEN not in portal.output()
    wait_for(lambda: not portal.gateways()[0]["connected"], 5, "portal sees the gateway leave")


def test_readyz_follows_portal_restart_and_reconnects(tmp_path, portal):
    gw = start_gateway(tmp_path, portal)
    try:
        assert wait_for(lambda: readyz(gw) == 200, 15, "ready")
        port = portal.port
        portal.stop()
        wait_for(lambda: readyz(gw) == 503, 10, "not ready once the portal is gone")
        assert gw.running()
        restarted = DevPortalProc(tmp_path, port=port, gateway_token=TOKEN)
        try:
            # Backoff from the first failure: 0, then ≤0.75, ≤1.1, ≤1.7 ... well under 10 s.
            wait_for(lambda: readyz(gw) == 200, 10, "ready again after the portal restarted")
            assert restarted.gateways()[0]["joined"]
            assert "Hiccup in portal connection" in gw.output()
        finally:
            restarted.stop()
    finally:
        gw.stop()


def test_readyz_503_before_joining(tmp_path):
    # Nothing listens on this port: the gateway keeps retrying and is never ready.
    class Nowhere:
        url = f"http://127.0.0.1:{free_port()}"

    gw = start_gateway(tmp_path, Nowhere)
    try:
        assert wait_for(lambda: readyz(gw), 10, "health server up") == 503
        assert http("GET", gw.health + "/healthz")[0] == 200
        assert gw.running()
    finally:
        gw.stop()


def test_wrong_token_exits_1_with_clear_message(tmp_path, portal, log_gate):
    log_gate.allow(r"Failed to start Gateway: portal rejected the connection with HTTP 401")
    gw = start_gateway(tmp_path, portal, token="wrong-token-value")
    code = gw.popen.wait(15)
    gw.stop()
    assert code == 1
    out = gw.output()
    assert re.search(r"HTTP 401 .*check FIREZONE_TOKEN", out)
    assert "wrong-token-value" not in out and "Traceback" not in out


def test_gives_up_after_max_elapsed(tmp_path, log_gate):
    log_gate.allow(r"Failed to start Gateway: Got disconnected from portal and hit the max-retry limit")
    class Nowhere:
        url = f"http://127.0.0.1:{free_port()}"

    gw = start_gateway(tmp_path, Nowhere, extra_env={"FIREZONE_MAX_RECONNECT_SECONDS": "1.5"})
    code = gw.popen.wait(20)
    gw.stop()
    assert code == 1
    assert "max-retry limit" in gw.output()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unprivileged_without_cap_net_admin_exits_1(tmp_path, portal):
    nobody = pwd.getpwnam("nobody")
    os.chmod(tmp_path, 0o755)
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
              "--inh-caps=-all", "--"]
    env = base_env() | {"FIREZONE_TOKEN": TOKEN, "FIREZONE_ID": "x", "FIREZONE_API_URL": portal.url}
    log = tmp_path / "unpriv.log"
    proc = Proc([str(VENV_BIN / "firezone-gateway")], env, log, prefix)
    code = proc.popen.wait(15)
    proc.stop()
    out = proc.output()
    assert code == 1 and "CAP_NET_ADMIN" in out and TOKEN not in out and out.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_missing_tun_device_is_one_clear_line_and_exit_1(tmp_path):
    # A private mount namespace where /dev/net is empty: no TUN device to open.
    script = f"mount -t tmpfs none /dev/net && exec {VENV_BIN / 'firezone-gateway'}"
    env = base_env() | {"FIREZONE_TOKEN": TOKEN, "FIREZONE_ID": "x", "FIREZONE_API_URL": "http://127.0.0.1:1",
                        "HEALTH_CHECK_ADDR": f"127.0.0.1:{free_port()}"}
    proc = Proc(["unshare", "-m", "sh", "-c", script], env, tmp_path / "notun.log")
    code = proc.popen.wait(15)
    proc.stop()
    out = proc.output()
    assert code == 1 and "TUN unavailable: /dev/net/tun does not exist" in out and "Traceback" not in out
