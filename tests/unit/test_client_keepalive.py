"""The SDK drops an idle keep-alive connection before ``rotator serve`` closes it, so a read is
never sent on a connection the server is closing (which fails with Unreachable although the
server is fine: the race the soak, bench/soak.py, met about once per 6,000 reads)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rotator.api import server as api_server
from rotator.client import Client
from rotator.client import client as client_module


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        body = json.dumps({"value": "v"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def process_request(self, request: object, client_address: object) -> None:
        self.connections += 1
        super().process_request(request, client_address)  # type: ignore[arg-type]


@pytest.fixture
def http_server() -> Iterator[_CountingServer]:
    srv = _CountingServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_sdk_keeps_idle_connections_for_less_time_than_the_server() -> None:
    assert client_module.KEEPALIVE_EXPIRY_S < api_server.KEEP_ALIVE_S


def test_the_sdk_opens_a_new_connection_after_its_keepalive_expiry(
    http_server: _CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "KEEPALIVE_EXPIRY_S", 0.1)
    url = f"http://127.0.0.1:{http_server.server_address[1]}"
    with Client(url, "token", cache_ttl=0) as client:
        assert client.get("a") == "v"
        assert client.get("a") == "v"
        assert http_server.connections == 1, "back-to-back reads share one connection"
        # The expiry is measured by httpcore's own clock (time.monotonic), which cannot be
        # passed in: wait it out (0.1 s, a little more).
        time.sleep(0.25)
        assert client.get("a") == "v"
        assert http_server.connections == 2, "an expired idle connection is not reused"
