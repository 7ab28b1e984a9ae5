"""A notification webhook receiver for the webhook tests, run as its own process.

``python webhook_receiver.py PORT LOG KEY_HEX [FAIL_FIRST [DELAY_S]]``: listens on
127.0.0.1:PORT (answering each request after DELAY_S seconds, default 0); at start
appends ``{"event": "start"}`` to LOG; for every POST appends ``{"event": "request",
"delivery", "type_header", "timestamp", "sig_ok", "body", "status"}`` (written and flushed
*before* the answer). The first FAIL_FIRST requests of this process are answered 500, the rest
200. ``sig_ok`` is the verification recipe of docs/webhooks.md, copied here on purpose (a
receiver does not import rotator): ``v1=`` + HMAC-SHA256(KEY, timestamp + "." + raw body),
compared in constant time with each comma-separated ``v1=`` of the header (any match
passes), and the timestamp within 300 s of the receiver's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT, LOG, KEY = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
FAIL_FIRST = int(sys.argv[4]) if len(sys.argv) > 4 else 0
DELAY = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0  # seconds before each answer
seen = 0


def record(line: dict[str, object]) -> None:
    with open(LOG, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def verify(key: bytes, body: bytes, timestamp: str, signature: str) -> bool:
    # -- the recipe of docs/webhooks.md --
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - ts) > 300:  # replay window
        return False
    expected = "v1=" + hmac.new(key, f"{ts}".encode() + b"." + body, hashlib.sha256).hexdigest()
    # One v1 per key (two while the key's previous value is in its grace): accept any match.
    return any(hmac.compare_digest(expected, sig.strip()) for sig in signature.split(","))


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        global seen
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers.get("X-Rotator-Timestamp", "")
        sig_ok = verify(KEY, body, ts, self.headers.get("X-Rotator-Signature", ""))
        seen += 1
        status = 500 if seen <= FAIL_FIRST else 200
        record(
            {
                "event": "request",
                "path": self.path,
                "delivery": self.headers.get("X-Rotator-Delivery"),
                "type_header": self.headers.get("X-Rotator-Event"),
                "content_type": self.headers.get("Content-Type"),
                "timestamp": ts,
                "signature": self.headers.get("X-Rotator-Signature", ""),
                "sig_ok": sig_ok,
                "raw": body.decode(),
                "body": json.loads(body),
                "status": status,
            }
        )
        if DELAY:
            time.sleep(DELAY)  # a slow receiver: lets two senders overlap
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = HTTPServer(("127.0.0.1", PORT), Handler)
    record({"event": "start"})
    server.serve_forever()
