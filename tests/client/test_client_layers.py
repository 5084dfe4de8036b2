"""``ca_service.client`` is what runs on the machines that need certificates: no Flask, no
store, no CA key, nothing of the server. Checked on the imports actually loaded, not on text."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_SIDE = (
    "flask",
    "werkzeug",
    "sqlalchemy",
    "alembic",
    "gunicorn",
    "ca_service.web",
    "ca_service.storage",
    "ca_service.core",
    "ca_service.signing",
    "ca_service.policy",
    "ca_service.wiring",
    "ca_service.cli",
    "ca_service.acme",
    "ca_service.oidc",
)


def test_the_client_library_loads_nothing_of_the_server() -> None:
    code = (
        "import json, sys\n"
        "import ca_service.client.flow, ca_service.client.credentials\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(out.stdout)
    wrong = [m for m in loaded if any(m == s or m.startswith(s + ".") for s in SERVER_SIDE)]
    assert wrong == []
    # The check sees what it should: the client and cryptography are loaded.
    assert "ca_service.client.transport" in loaded and "cryptography.x509" in loaded
