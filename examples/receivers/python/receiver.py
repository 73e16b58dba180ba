#!/usr/bin/env python3
"""A webhook receiver for walhook, Python standard library only.

It verifies every delivery's signature over the RAW request body, answers 401 when the
signature is missing or wrong, deduplicates by the payload's `id` (walhook delivers at least
once: a redelivery carries the same id), and prints one line per delivery:

    signature OK  INSERT orders id=1  evt_0000000001a2b3c400000000

Environment:
    WEBHOOK_SECRET     the subscription's `secret` (required)
    WEBHOOK_SIGNATURE  "archie" (default: X-Archie-Signature: sha256=<hex>) or "standard"
                       (Standard Webhooks: webhook-id / webhook-timestamp / webhook-signature)
    HOST, PORT         where to listen (default 127.0.0.1:9000; PORT=0 picks a free port)

Run:  WEBHOOK_SECRET=whsec_your_signing_secret python3 receiver.py
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("WEBHOOK_SECRET", "")
SCHEME = os.environ.get("WEBHOOK_SIGNATURE", "archie")
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "9000"))
MAX_BODY = 1 << 20
# Standard Webhooks: reject timestamps further than this from now (replay protection).
TOLERANCE_SECONDS = 5 * 60


# Archie's documented verification code, unchanged. `payload` must be the raw body bytes as
# received: re-serialising parsed JSON (json.dumps(request.json)) changes the bytes — 99.50
# becomes 99.5, spacing and key order may change — and the signature no longer matches.
def verify_webhook_signature(payload: bytes, signature: str, secret: str) -> bool:
    expected = hmac.new(
        secret.encode('utf-8'),
        payload,
        hashlib.sha256
    ).hexdigest()
    sig = signature.replace('sha256=', '')
    return hmac.compare_digest(sig, expected)


def verify_standard_webhook(payload: bytes, headers, secret: str) -> bool:
    """Standard Webhooks (https://www.standardwebhooks.com): HMAC-SHA256 over
    "{webhook-id}.{webhook-timestamp}.{body}" with the base64 key after "whsec_"; the header
    holds one or more space-separated "v1,<base64>" signatures (two during a secret rotation)."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return False
    try:
        if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            return False
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + payload
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for candidate in signatures.split(" "):
        version, _, sig = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), expected.encode()):
            return True
    return False


class SeenIds:
    """The last `size` event ids processed; a delivery whose id is here was already handled."""

    def __init__(self, size=100_000):
        self.size = size
        self.ids = OrderedDict()
        self.lock = threading.Lock()

    def add(self, event_id) -> bool:
        """True when the id is new."""
        with self.lock:
            if event_id in self.ids:
                return False
            self.ids[event_id] = None
            if len(self.ids) > self.size:
                self.ids.popitem(last=False)
            return True


SEEN = SeenIds()


def log(line: str) -> None:
    print(line, flush=True)


class Handler(BaseHTTPRequestHandler):
    server_version = "walhook-example-receiver"

    def do_GET(self):
        if self.path == "/healthz":
            self.reply(200, {"status": "ok"})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.reply(413, {"error": "body too large"})
        payload = self.rfile.read(length)  # the raw bytes: verify these, not re-serialised JSON

        if SCHEME == "standard":
            valid = verify_standard_webhook(payload, self.headers, SECRET)
        else:
            signature = self.headers.get("X-Archie-Signature")
            try:
                valid = signature is not None and verify_webhook_signature(payload, signature, SECRET)
            except TypeError:  # compare_digest refuses non-ASCII strings: not a valid signature
                valid = False
        if not valid:
            log(f"signature INVALID  {self.path}: answering 401")
            return self.reply(401, {"error": "Invalid signature"})

        try:
            event = json.loads(payload)
        except ValueError:
            return self.reply(400, {"error": "Invalid JSON"})
        event_id = event.get("id") or self.headers.get("X-Archie-Delivery")
        if not SEEN.add(event_id):
            log(f"duplicate  {event_id}: already processed, answering 200")
            return self.reply(200, {"status": "duplicate"})

        record = event.get("record") or {}
        log(
            f"signature OK  {event.get('event')} {event.get('table')} "
            f"id={json.dumps(record.get('id'))}  {event_id}"
        )
        # Process the event here (quickly: answer within a few seconds, queue slow work).
        self.reply(200, {"status": "ok"})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass  # one line per delivery is printed by do_POST


def main():
    if not SECRET:
        sys.exit("receiver.py: set WEBHOOK_SECRET to the subscription's secret")
    if SCHEME not in ("archie", "standard"):
        sys.exit('receiver.py: WEBHOOK_SIGNATURE must be "archie" or "standard"')
    # `docker stop` sends SIGTERM; exit at once instead of waiting to be killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    host, port = server.server_address[:2]
    log(f"listening on http://{host}:{port} (signature scheme: {SCHEME})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
