"""Parses one walhook delivery with the CloudEvents Python SDK (PyPI `cloudevents`).

Input on stdin (JSON): {"headers": {name: value}, "body_b64": "..."}.
Prints the event's attributes and data as one JSON object and exits 0 when the SDK's `from_http`
accepts the request; prints "INVALID <reason>" and exits 1 when it refuses it; exits 3 when the
package is not installed. With cloudevents 2.x, the new `cloudevents.core` binding must accept
it too and agree.
"""
import base64
import json
import sys

try:
    try:
        from cloudevents.http import from_http  # cloudevents 1.x
    except ImportError:
        from cloudevents.v1.http import from_http  # cloudevents 2.x keeps 1.x's API here
except ImportError as e:
    print(f"MISSING cloudevents ({e}): python3 -m pip install cloudevents")
    sys.exit(3)

req = json.load(sys.stdin)
body = base64.b64decode(req["body_b64"])
try:
    event = from_http(req["headers"], body)
except Exception as e:  # the SDK raises its own error types; any refusal is a refusal
    print(f"INVALID {type(e).__name__}: {e}")
    sys.exit(1)

attrs = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in event.get_attributes().items()}
out = {"attributes": attrs, "data": event.get_data()}

try:
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event
except ImportError:
    pass
else:
    core = from_http_event(HTTPMessage(headers=req["headers"], body=body))
    if core.get_id() != attrs["id"] or core.get_data() != out["data"]:
        print("INVALID the cloudevents.core binding disagrees with from_http")
        sys.exit(1)
    out["core_type"] = core.get_type()

print(json.dumps(out))
