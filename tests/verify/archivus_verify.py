#!/usr/bin/env python3
"""Receiver-side check of a walhook delivery shaped as an Archivus webhook, used by
tests/it/options.rs.

`verify_webhook` below is copied verbatim from the Archivus webhook document (shared seed 001,
"Webhook Verification", Python), and is called the way its Flask handler (seed 002) calls it:
with the request body as text and the X-Archivus-Signature header.

Input on stdin (JSON): {"body_b64": ..., "signature": <X-Archivus-Signature>, "secret": ...}.
Output: "true" or "false", then the parsed event's `type` (what the document's handler
dispatches on).
"""
import base64
import json
import sys

# ---- verbatim from the Archivus document ----
import hmac
import hashlib
def verify_webhook(payload, signature, secret):
    expected_signature = hmac.new(
    secret.encode(),
    payload.encode(),
    hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(
    f"sha256={expected_signature}",
    signature
    )
# ---- end verbatim ----

case = json.load(sys.stdin)
payload = base64.b64decode(case["body_b64"]).decode("utf-8")
print("true" if verify_webhook(payload, case["signature"], case["secret"]) else "false")
event = json.loads(payload)
print(event["type"])
