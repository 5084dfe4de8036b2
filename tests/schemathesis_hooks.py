"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/web/test_schemathesis.py.

POST /ocsp takes a DER body as application/ocsp-request, a media type schemathesis has no
serializer for; its bytes are sent as they are, like application/octet-stream.
"""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/ocsp-request", "application/octet-stream")
