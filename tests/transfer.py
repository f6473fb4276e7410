"""Whole TCP transfers through a tunnel, checked by SHA-256 on both ends (the lab tests' helper).

`serve(lab, port)` starts, in the resource namespace, a server on every resource address (IPv4
and IPv6): `up N` reads N bytes and answers their SHA-256; `down N` sends N bytes (seeded, so
the client knows their SHA-256) and closes. `transfer(lab, address, port, size)` runs both from
the client namespace and returns, per direction, whether the bytes arrived whole.
"""

from __future__ import annotations

import json
from typing import Any

from tests.netlab import NetLab
from tests.procs import VENV_BIN, base_env, wait_for

SERVER = r"""
import hashlib, random, socket, sys, threading
def serve(conn):
    with conn:
        line = b""
        while not line.endswith(b"\n"):  # byte by byte: a buffered reader would eat the data
            line += conn.recv(1)
        verb, size = line.split()[0], int(line.split()[1])
        if verb == b"up":
            digest, left = hashlib.sha256(), size
            while left:
                chunk = conn.recv(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            conn.sendall(digest.hexdigest().encode() + b"\n")
        else:
            conn.sendall(random.Random(size).randbytes(size))
def listen(address):
    listener = socket.create_server((address, int(sys.argv[1])),
                                    family=socket.AF_INET6 if ":" in address else socket.AF_INET)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
for address in sys.argv[2:]:
    threading.Thread(target=listen, args=(address,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import hashlib, json, random, socket, sys, time
server, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(size).randbytes(size)
expected = hashlib.sha256(data).hexdigest()
result = {}
for verb in ("up", "down"):
    started = time.monotonic()
    with socket.create_connection((server, port), timeout=10) as conn:
        conn.sendall(f"{verb} {size}\n".encode())
        if verb == "up":
            conn.sendall(data)
            got = conn.makefile("rb").readline().strip().decode()
            received = size
        else:
            digest, received = hashlib.sha256(), 0
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
                received += len(chunk)
            got = digest.hexdigest()
    result[verb] = {"whole": got == expected, "bytes": received, "seconds": round(time.monotonic() - started, 2)}
print(json.dumps(result))
"""


def serve(lab: Any, port: int, addresses: tuple[str, ...] = (NetLab.RESOURCE,)) -> None:
    proc = lab.net.spawn("resource", [str(VENV_BIN / "python"), "-c", SERVER, str(port), *addresses], base_env(),
                         f"tcp-transfer-{port}")
    wait_for(lambda: "ready" in proc.output() or not proc.running(), 10,
             "the transfer server in the resource namespace")
    assert proc.running(), proc.output()


def transfer(lab: Any, address: str, port: int, size: int, timeout: float = 300) -> dict[str, dict[str, Any]]:
    """`size` bytes up then down; a socket timeout of 10 s turns a stall into a failure, not a hang."""
    code, out = lab.client_sh(str(VENV_BIN / "python"), "-c", CLIENT, address, str(port), str(size), timeout=timeout)
    assert code == 0, out
    result: dict[str, dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
    return result
