#!/usr/bin/env python3
"""Receiver-side check of walhook's Archie signatures, used by tests/signatures.rs.

`verify_webhook_signature` below is copied verbatim from the Archie webhook document
(shared seed 003, "Verifying signatures", Python): if it accepts what walhook sends, so does
every receiver that followed the document.

Input on stdin, one JSON object per line:
  {"body_b64": <raw request body, base64>, "signature": <header value>, "secret": <secret>}
Output: one line per case, "true" or "false".
"""
import base64
import json
import sys

# ---- verbatim from the Archie document ----
import hmac
import hashlib

def verify_webhook_signature(payload: bytes, signature: str, secret: str) -> bool:
    expected = hmac.new(
        secret.encode('utf-8'),
        payload,
        hashlib.sha256
    ).hexdigest()
    sig = signature.replace('sha256=', '')
    return hmac.compare_digest(sig, expected)
# ---- end verbatim ----


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        body = base64.b64decode(case["body_b64"])
        ok = verify_webhook_signature(body, case["signature"], case["secret"])
        sys.stdout.write("true\n" if ok else "false\n")


if __name__ == "__main__":
    main()
