"""Load generators for bench_load.py, run as their own processes inside the client namespace.

    python bench/loadgen.py flood --gateway-key B64 --target IP:PORT --bind IP --rate N --seconds S --out FILE
    python bench/loadgen.py swarm --spec FILE --out FILE        (reads "go" on stdin after printing "ready")

flood   handshake initiations from random static keys, each with a valid mac1 for the gateway's
        public key and no mac2 (a flooder never has a cookie). A pool of real initiations is
        built first (create_initiation from the sans-I/O core, one fresh static and ephemeral
        key each), then sent from several UDP sockets (distinct source ports) with
        sendmmsg(2) in batches, paced to --rate by a token bucket. Replies are drained with
        recvmmsg(2) and counted by type (cookie replies: type 3, 64 bytes). The result (sent,
        replies, per-second counts, send errors, own CPU) is written as JSON to --out.

swarm   many authorized clients, one `WireGuardDevice` and one UDP socket each (the gateway
        tells clients apart by their endpoint). On "go" every client sends an ICMP echo
        request to the resource, which starts its handshake; after each echo reply it sends
        the next, up to `echoes`. Devices are ticked every 50 ms (handshake retransmits:
        after a cookie reply the retry carries mac2). Per client: when its handshake completed,
        when its echo replies came, how many initiations it sent and cookie replies it got.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import resource
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway_pkg.wireguard import HandshakeCompleted, WireGuardDevice, keys  # noqa: E402
from gateway_pkg.wireguard.messages import (  # noqa: E402
    COOKIE_REPLY_LEN,
    HANDSHAKE_INITIATION_LEN,
    INITIATION_MAC1_OFFSET,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_HANDSHAKE_INITIATION,
)
from gateway_pkg.wireguard.noise import create_initiation, tai64n  # noqa: E402
from gateway_pkg.wireguard.primitives import LABEL_MAC1, MAC_LEN, hash_, mac  # noqa: E402
from tests.packets import build_icmp_echo  # noqa: E402

MSG_DONTWAIT = 0x40
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SOCKET_BUFFER = 4 << 20
RECV_SLOT = 2048


# --- sendmmsg / recvmmsg through ctypes ---------------------------------------------------------

class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_LIBC.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]


class MessageVector:
    """`count` fixed-size slots in one buffer, each with its iovec and mmsghdr, for
    sendmmsg/recvmmsg on a connected socket (no msg_name)."""

    def __init__(self, count: int, slot: int, payload: bytes | None = None) -> None:
        self.count, self.slot = count, slot
        self.data = bytearray(count * slot) if payload is None else bytearray(payload)
        self._cbuf = (ctypes.c_char * len(self.data)).from_buffer(self.data)
        base = ctypes.addressof(self._cbuf)
        self.iovs = (IoVec * count)()
        self.hdrs = (MMsgHdr * count)()
        for i in range(count):
            self.iovs[i].iov_base = base + i * slot
            self.iovs[i].iov_len = slot
            self.hdrs[i].msg_hdr.msg_iov = ctypes.pointer(self.iovs[i])
            self.hdrs[i].msg_hdr.msg_iovlen = 1
        self._hdr_base = ctypes.addressof(self.hdrs)
        self._hdr_size = ctypes.sizeof(MMsgHdr)

    def at(self, index: int) -> int:
        return self._hdr_base + index * self._hdr_size

    def send(self, fd: int, start: int, n: int) -> int:
        """Messages sent (0 when the socket buffer is full)."""
        done = _LIBC.sendmmsg(fd, self.at(start), n, MSG_DONTWAIT)
        if done < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED):
                return 0
            raise OSError(err, os.strerror(err))
        return int(done)

    def receive(self, fd: int) -> int:
        """Messages received into the slots (0 when there are none)."""
        for i in range(self.count):
            self.hdrs[i].msg_hdr.msg_flags = 0
        got = _LIBC.recvmmsg(fd, self.at(0), self.count, MSG_DONTWAIT, None)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.ECONNREFUSED, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        return int(got)


def _big_buffers(sock: socket.socket) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


# --- flood --------------------------------------------------------------------------------------

def build_initiations(gateway_key: bytes, count: int) -> bytes:
    """`count` initiations, each from a fresh random static key, mac1 valid, mac2 zero."""
    mac1_key = hash_(LABEL_MAC1 + gateway_key)
    out = bytearray()
    wall = time.time()
    for i in range(count):
        static = keys.generate_private_key()
        _state, message = create_initiation(
            local_public_key=keys.public_key(static), remote_public_key=gateway_key,
            static_static=keys.dh(static, gateway_key), local_index=int.from_bytes(os.urandom(4), "little"),
            ephemeral_private=keys.generate_private_key(), timestamp=tai64n(wall + i * 1e-6))
        raw = bytearray(message.encode())
        end = INITIATION_MAC1_OFFSET + MAC_LEN
        raw[INITIATION_MAC1_OFFSET:end] = mac(mac1_key, bytes(raw[:INITIATION_MAC1_OFFSET]))
        out += raw
    return bytes(out)


def flood(args: argparse.Namespace) -> int:
    gateway_key = keys.key_from_base64(args.gateway_key)
    host, port = args.target.rsplit(":", 1)
    built = time.monotonic()
    pool = MessageVector(args.distinct, HANDSHAKE_INITIATION_LEN, build_initiations(gateway_key, args.distinct))
    build_seconds = time.monotonic() - built
    socks = []
    for _ in range(args.sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _big_buffers(sock)
        sock.bind((args.bind, 0))
        sock.connect((host, int(port)))
        sock.setblocking(False)
        socks.append(sock)
    fds = [s.fileno() for s in socks]
    inbox = MessageVector(args.batch, RECV_SLOT)
    replies: dict[int, int] = {}
    other_replies = 0
    seconds_sent: list[int] = [0] * (int(args.seconds) + 1)
    seconds_replies: list[int] = [0] * (int(args.seconds) + 3)
    sent = full = 0
    cursor = sock_i = 0
    rate, batch = float(args.rate), args.batch
    print(f"flood: {args.distinct} initiations built in {build_seconds:.2f} s; sending", flush=True)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()

    def drain(now: float) -> None:
        nonlocal other_replies
        bucket = min(int(now - t0), len(seconds_replies) - 1)
        for fd in fds:
            while True:
                got = inbox.receive(fd)
                if not got:
                    break
                for i in range(got):
                    size = inbox.hdrs[i].msg_len
                    kind = inbox.data[i * RECV_SLOT]
                    if kind == MESSAGE_COOKIE_REPLY and size == COOKIE_REPLY_LEN:
                        replies[kind] = replies.get(kind, 0) + 1
                        seconds_replies[bucket] += 1
                    else:
                        other_replies += 1
                if got < inbox.count:
                    break

    end = t0 + args.seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int(rate * (now - t0)) - sent
        while due > 0:
            n = min(due, batch, pool.count - cursor)
            done = pool.send(fds[sock_i], cursor, n)
            sock_i = (sock_i + 1) % len(fds)
            if done == 0:
                full += 1
                break
            sent += done
            due -= done
            seconds_sent[min(int(now - t0), len(seconds_sent) - 1)] += done
            cursor = (cursor + done) % pool.count
        drain(now)
        wait = (sent + batch) / rate - (time.monotonic() - t0)
        if wait > 0:
            time.sleep(min(wait, 0.002))
    send_seconds = time.monotonic() - t0
    linger = time.monotonic() + 1.0
    while time.monotonic() < linger:
        drain(time.monotonic())
        time.sleep(0.005)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "sent": sent, "send_seconds": send_seconds, "rate": sent / send_seconds, "target_rate": rate,
        "sockets": len(fds), "batch": batch, "distinct": args.distinct, "build_seconds": build_seconds,
        "buffer_full": full, "cookie_replies": replies.get(MESSAGE_COOKIE_REPLY, 0), "other_replies": other_replies,
        "per_second_sent": seconds_sent[:int(args.seconds)], "per_second_replies": seconds_replies,
        "cpu_seconds": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }
    Path(args.out).write_text(json.dumps(result))
    for sock in socks:
        sock.close()
    return 0


# --- swarm --------------------------------------------------------------------------------------

class SwarmClient:
    __slots__ = ("cookies", "device", "echo_at", "gateway", "handshake_at", "index", "initiations", "ipv4",
                 "replies", "sock")

    def __init__(self, index: int, spec: dict[str, str], gateway: bytes, endpoint: tuple[str, int],
                 bind: str) -> None:
        self.index = index
        self.ipv4 = spec["ipv4"]
        self.device = WireGuardDevice(keys.key_from_base64(spec["private_key"]))
        self.gateway = gateway
        self.device.add_peer(gateway, keys.key_from_base64(spec["preshared_key"]))
        self.device.set_peer_endpoint(gateway, endpoint)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.sock.setblocking(False)
        self.handshake_at: float | None = None
        self.echo_at: list[float] = []
        self.replies = 0
        self.cookies = 0
        self.initiations = 0


def swarm(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = json.loads(Path(args.spec).read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(spec["clients"]) + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    gateway = keys.key_from_base64(spec["gateway_key"])
    endpoint = (spec["endpoint"][0], int(spec["endpoint"][1]))
    target, echoes, timeout = spec["resource"], int(spec["echoes"]), float(spec["timeout"])
    clients = [SwarmClient(int(c["index"]), c, gateway, endpoint, spec["bind"]) for c in spec["clients"]]
    by_fd = {c.sock.fileno(): c for c in clients}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    t0 = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    def emit(client: SwarmClient, datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, dest in datagrams:
            if data[0] == MESSAGE_HANDSHAKE_INITIATION:
                client.initiations += 1
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                client.sock.sendto(data, dest)

    def echo(client: SwarmClient, now: float) -> None:
        packet = build_icmp_echo(client.ipv4, target, client.index & 0xFFFF, client.replies + 1, b"load" * 8)
        out = client.device.send_packet(gateway, packet, now)
        emit(client, out.datagrams)

    for client in clients:
        echo(client, time.monotonic())
    pending = {c.index: c for c in clients}
    next_tick = time.monotonic() + 0.05
    deadline = t0 + timeout
    while pending and time.monotonic() < deadline:
        for fd, _mask in poller.poll(0.02):
            client = by_fd[fd]
            while True:
                try:
                    data, source = client.sock.recvfrom(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                now = time.monotonic()
                if data and data[0] == MESSAGE_COOKIE_REPLY:
                    client.cookies += 1
                out = client.device.receive_datagram(data, source, now)
                emit(client, out.datagrams)
                for event in out.events:
                    if isinstance(event, HandshakeCompleted) and client.handshake_at is None:
                        client.handshake_at = now - t0
                for _peer, packet in out.packets:
                    # IPv4 without options, ICMP echo reply to this client
                    if len(packet) >= 28 and packet[9] == 1 and packet[20] == 0:
                        client.replies += 1
                        client.echo_at.append(now - t0)
                        if client.replies < echoes:
                            echo(client, now)
                        else:
                            pending.pop(client.index, None)
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + 0.05
            for client in list(pending.values()):
                emit(client, client.device.tick(now).datagrams)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "clients": [{"index": c.index, "handshake_at": c.handshake_at, "echo_at": c.echo_at, "replies": c.replies,
                     "cookies": c.cookies, "initiations": c.initiations} for c in clients],
        "seconds": time.monotonic() - t0,
        "cpu_seconds": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }
    Path(args.out).write_text(json.dumps(result))
    for client in clients:
        client.sock.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--gateway-key", required=True)
    f.add_argument("--target", required=True, help="IP:PORT")
    f.add_argument("--bind", required=True)
    f.add_argument("--rate", type=float, default=12000)
    f.add_argument("--seconds", type=float, default=20)
    f.add_argument("--sockets", type=int, default=4)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--distinct", type=int, default=4096)
    f.add_argument("--out", required=True)
    s = sub.add_parser("swarm")
    s.add_argument("--spec", required=True)
    s.add_argument("--out", required=True)
    args = parser.parse_args()
    return flood(args) if args.command == "flood" else swarm(args)


if __name__ == "__main__":
    sys.exit(main())
