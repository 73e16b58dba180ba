"""Verifies one Standard Webhooks delivery with the reference `standardwebhooks` package.

Input on stdin (JSON): {"secret": "whsec_...", "headers": {name: value}, "body_b64": "..."}.
Prints "OK" and exits 0 when the package accepts the delivery; prints "INVALID <reason>" and
exits 1 when it refuses it; exits 3 when the package is not installed.
"""
import base64
import json
import sys

try:
    from standardwebhooks.webhooks import Webhook
except ImportError as e:
    print(f"MISSING standardwebhooks ({e}): python3 -m pip install standardwebhooks")
    sys.exit(3)

req = json.load(sys.stdin)
body = base64.b64decode(req["body_b64"])
try:
    Webhook(req["secret"]).verify(body, req["headers"], json_parse=False)
except Exception as e:  # the package raises its own error types; any refusal is a refusal
    print(f"INVALID {type(e).__name__}: {e}")
    sys.exit(1)
print("OK")
