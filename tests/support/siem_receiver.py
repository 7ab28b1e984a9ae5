"""A SIEM webhook receiver for the forwarding tests, run as its own process.

``python siem_receiver.py PORT LOG KEY_HEX [FAIL_FIRST]``: listens on 127.0.0.1:PORT; at start
appends ``{"event": "start"}`` to LOG; for every POST appends ``{"event": "request",
"delivery", "timestamp", "sig_ok", "seqs", "status"}`` (the line is written and flushed
*before* the answer, so a request this process acknowledged is always in LOG; one it recorded
may still have gone unanswered if it was killed in between). The first FAIL_FIRST requests of
this process are answered 500, the rest 200. ``sig_ok``: the X-Rotator-Signature header equals
``sha256=`` + HMAC-SHA256(KEY, timestamp + "." + body).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, LOG, KEY = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
FAIL_FIRST = int(sys.argv[4]) if len(sys.argv) > 4 else 0
seen = 0


def record(line: dict[str, object]) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        global seen
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers.get("X-Rotator-Timestamp", "")
        expected = "sha256=" + hmac.new(KEY, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        sig_ok = hmac.compare_digest(expected, self.headers.get("X-Rotator-Signature", ""))
        seen += 1
        status = 500 if seen <= FAIL_FIRST else 200
        entries = json.loads(body)["entries"]
        record(
            {
                "event": "request",
                "delivery": self.headers.get("X-Rotator-Delivery"),
                "content_type": self.headers.get("Content-Type"),
                "timestamp": ts,
                "sig_ok": sig_ok,
                "seqs": [e["seq"] for e in entries],
                "status": status,
            }
        )
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = HTTPServer(("127.0.0.1", PORT), Handler)
    record({"event": "start"})
    server.serve_forever()
