"""The TUN device deleted underneath: what a failed read means, the recovery schedule (sans-I/O),
and the data plane's reaction on a real event loop with a socketpair standing in for the TUN fd:
the reader removed at once (no busy loop), one ERROR line, /readyz 503 with the reason, the
device recreated and read again, or status 1 when it cannot be."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket

import pytest

from gateway_pkg.errors import RuntimeFailure
from gateway_pkg.tunnel.dataplane import TunnelDataPlane
from gateway_pkg.tunnel.tun import RECOVERY_DELAYS, RECOVERY_GIVE_UP, TunRecovery, read_failure
from tests.procs import wait_for_async

IPV4 = ipaddress.IPv4Address("100.95.0.7")
IPV6 = ipaddress.IPv6Address("fd00:2021:1111::1f:7")


# --- what a failed read means -------------------------------------------------------------------

@pytest.mark.parametrize("code", [errno.EAGAIN, errno.EINTR])
def test_nothing_to_read_is_not_a_loss(code):
    assert read_failure(OSError(code, os.strerror(code))) is None


def test_ebadfd_is_a_deleted_device_and_other_errors_say_what_failed():
    assert "deleted" in (read_failure(OSError(errno.EBADFD, os.strerror(errno.EBADFD))) or "")
    assert read_failure(OSError(errno.EIO, os.strerror(errno.EIO))) == "read failed: Input/output error"
    assert read_failure(None) == "read returned end of file"


# --- the schedule ---------------------------------------------------------------------------------

def test_a_loss_is_reported_once_until_recovered():
    recovery = TunRecovery("tun-firezone")
    assert recovery.readiness() is None and not recovery.lost
    assert recovery.lose("the device was deleted", 100.0) is True
    assert recovery.lose("read failed again", 100.1) is False  # same loss: no second line
    assert recovery.readiness() == "TUN device tun-firezone was removed (the device was deleted); recreating it"
    message = recovery.lost_message()
    assert message.startswith("TUN device tun-firezone was removed (the device was deleted); recreating it")
    assert f"for up to {RECOVERY_GIVE_UP:.0f} s, then exiting with status 1" in message
    assert recovery.recovered(100.25) == pytest.approx(0.25)
    assert recovery.readiness() is None and not recovery.lost
    assert recovery.lose("deleted once more", 200.0) is True  # a later loss is a new one


def test_failed_attempts_back_off_then_give_up():
    recovery = TunRecovery("tun-firezone")
    recovery.lose("deleted", 0.0)
    assert RECOVERY_DELAYS[0] == 0.0  # the first attempt is at once
    delays = [recovery.failed(f"error {i}", now=0.0) for i in range(1, 9)]
    assert delays == [0.1, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert "(last attempt: error 8)" in (recovery.readiness() or "")
    assert recovery.failed("still taken", now=RECOVERY_GIVE_UP - 0.01) == 2.0
    assert recovery.failed("still taken", now=RECOVERY_GIVE_UP) is None
    assert recovery.give_up_message() == (
        f"TUN device tun-firezone was removed and could not be recreated in {RECOVERY_GIVE_UP:.0f} s "
        "(10 attempts): still taken")


# --- the data plane on a real loop ----------------------------------------------------------------

class FakeTun:
    """A socketpair end as the TUN fd; `reopen` puts a fresh socketpair end on the same number,
    as the real one does with dup2."""

    name = "tun-firezone"
    vnet_hdr = tso = uso = False

    def __init__(self, failures: int) -> None:
        self.ours, self.kernel = socket.socketpair()
        self.ours.setblocking(False)
        self.fd = self.ours.fileno()
        self.assigned: tuple[ipaddress.IPv4Address, ipaddress.IPv6Address] | None = (IPV4, IPV6)
        self.failures = failures
        self.reopened = 0

    def reopen(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeFailure("cannot create TUN device tun-firezone: Invalid argument")
        ours, self.kernel = socket.socketpair()
        os.dup2(ours.fileno(), self.fd, inheritable=False)
        os.set_blocking(self.fd, False)
        ours.close()
        self.reopened += 1

    def is_up(self) -> bool:
        return True

    def close(self) -> None:
        self.ours.close()
        self.kernel.close()


async def plane_with(tun: FakeTun, recovery: TunRecovery) -> tuple[TunnelDataPlane, list[int]]:
    plane = TunnelDataPlane(b"\x01" * 32, resolver=None)  # type: ignore[arg-type]
    plane.tun = tun  # type: ignore[assignment]
    plane.tun_recovery = recovery
    plane._loop = asyncio.get_running_loop()
    plane._addresses_set = True
    wakeups: list[int] = []

    def on_readable() -> None:
        wakeups.append(1)
        plane._on_tun_readable()

    plane._loop.add_reader(tun.fd, on_readable)
    return plane, wakeups


async def test_a_dead_fd_is_dropped_from_the_loop_reported_once_and_the_device_recreated(caplog):
    caplog.set_level(logging.INFO, logger="gateway_pkg.tunnel")
    tun = FakeTun(failures=2)
    plane, wakeups = await plane_with(tun, TunRecovery("tun-firezone", delays=(0.0, 0.05)))
    assert plane.ready() == (True, "ready")
    tun.kernel.close()  # the fd now reads end of file for ever, like a deleted TUN's EBADFD

    await wait_for_async(lambda: plane.tun_recovery.attempts >= 1, 2, "a first failed attempt")
    ready, reason = plane.ready()
    assert not ready
    assert reason == ("TUN device tun-firezone was removed (read returned end of file); recreating it "
                      "(last attempt: cannot create TUN device tun-firezone: Invalid argument)")
    await wait_for_async(lambda: tun.reopened == 1, 2, "the device recreated")
    assert wakeups == [1]  # one wake-up on the dead fd, then it was off the loop: no busy loop
    assert plane.ready() == (True, "ready")

    # The recreated device is read again (a malformed packet: read and dropped).
    tun.kernel.send(b"\x45")
    await wait_for_async(lambda: not _readable(tun.fd), 2, "the new fd drained")
    assert plane._loop is not None and plane._loop.remove_reader(tun.fd)

    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "TUN device" in r.getMessage()]
    assert [level for level, _ in lines] == ["ERROR", "WARNING", "INFO"], lines
    assert lines[0][1].startswith("TUN device tun-firezone was removed (read returned end of file); recreating it")
    assert lines[1][1] == ("Cannot recreate TUN device tun-firezone yet: cannot create TUN device tun-firezone: "
                           "Invalid argument; retrying")
    assert lines[2][1].startswith("TUN device tun-firezone recreated ")
    tun.close()


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


async def test_a_device_that_cannot_be_recreated_ends_the_process_with_status_1():
    tun = FakeTun(failures=1000)
    plane, wakeups = await plane_with(tun, TunRecovery("tun-firezone", delays=(0.0, 0.01), give_up_after=0.05))
    fatal: list[Exception] = []
    plane.on_fatal = fatal.append
    tun.kernel.close()
    await wait_for_async(lambda: fatal, 2, "the fatal failure")
    assert isinstance(fatal[0], RuntimeFailure) and fatal[0].exit_status == 1
    assert str(fatal[0]).startswith("TUN device tun-firezone was removed and could not be recreated in 0 s (")
    assert str(fatal[0]).endswith("attempts): cannot create TUN device tun-firezone: Invalid argument")
    assert wakeups == [1] and not plane.ready()[0]
    await asyncio.gather(*plane._tasks)
    tun.close()


async def test_an_empty_batch_after_a_real_packet_is_not_a_loss():
    tun = FakeTun(failures=0)
    plane, wakeups = await plane_with(tun, TunRecovery("tun-firezone"))
    tun.kernel.send(b"\x45")
    await wait_for_async(lambda: wakeups, 2, "the packet read")
    await wait_for_async(lambda: not _readable(tun.fd), 2, "drained")
    assert not plane.tun_recovery.lost and plane.ready() == (True, "ready")
    assert plane._loop is not None and plane._loop.remove_reader(tun.fd)
    tun.close()
