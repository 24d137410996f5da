"""The HTTP client under --stream's range reads: urllib3 (what expo uses) against http.client's own `readinto`.

    python benchmarks/bench_range_client.py [--size-mb 512] [--rounds 3]

A server in another process sends a body of --size-mb over loopback; each client receives it 4 times into one reused
buffer in 4 MB pieces (as `RangeClient._receive` does), alternating, --rounds times. Printed: MB/s over the wall and
the client's CPU seconds per GB. urllib3's `readinto` reads into a fresh bytes object and copies it: this measures
whether that costs anything next to http.client's direct `readinto`.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import resource
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECE = 4 * 2**20


def serve(port: int, size: int) -> None:
    body = memoryview(bytes(size))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(206)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for offset in range(0, size, PIECE):
                self.wfile.write(body[offset : offset + PIECE])

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb * 2**20
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    multiprocessing.Process(target=serve, args=(port, size), daemon=True).start()
    time.sleep(0.5)
    into = memoryview(bytearray(size))

    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1)
    connection = http.client.HTTPConnection("127.0.0.1", port)

    def with_http_client() -> None:
        connection.request("GET", "/")
        response, received = connection.getresponse(), 0
        while received < size:
            received += response.readinto(into[received : received + PIECE])

    def with_urllib3() -> None:
        response = pool.request("GET", "/", preload_content=False, decode_content=False)
        received = 0
        while received < size:
            received += response.readinto(into[received : received + PIECE])
        response.release_conn()

    for _ in range(args.rounds):
        for name, receive in (("http.client", with_http_client), ("urllib3", with_urllib3)):
            receive()  # a warm connection and buffer
            wall, cpu = time.perf_counter(), cpu_seconds()
            for _ in range(4):
                receive()
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            gigabytes = 4 * size / 1e9
            print(f"{name:12s} {gigabytes * 1e3 / wall:7.0f} MB/s, {cpu / gigabytes:.2f} CPU-s per GB (client)")


if __name__ == "__main__":
    main()
