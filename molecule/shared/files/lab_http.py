#!/usr/bin/python3
"""HTTP resources of the e2e lab: one server per (address, port), each answering
`<name> from <peer address>` so a check can tell which resource it reached and through
which gateway (the gateway masquerades, so the peer is the gateway's own address).

Usage: lab_http.py /etc/lab/http.json   ([{"address": ..., "port": ..., "name": ...}, ...])
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler_for(name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{name} from {self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stdout.write(f"{name} {self.client_address[0]} {fmt % args}\n")
            sys.stdout.flush()

    return Handler


def main() -> None:
    with open(sys.argv[1]) as config:
        specs = json.load(config)
    servers = [ThreadingHTTPServer((s["address"], int(s["port"])), handler_for(s["name"])) for s in specs]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    print("serving", ", ".join(f"{s.server_address[0]}:{s.server_address[1]}" for s in servers), flush=True)
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
