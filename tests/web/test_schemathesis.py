"""Issue 9 item 6: schemathesis against the live server's own /openapi.json.

For each backend (SQLite, PostgreSQL) and each role (admin, issuer, reader), one bounded run of
the schemathesis CLI (``--max-time`` seconds each, a fixed ``--seed``) with explicit checks: no
5xx, every status, content type, header and JSON body as documented, and invalid input (as the
document defines it) refused. The server log must stay free of tracebacks.

The admin run leaves out two operations that would end the run's own premises: ``DELETE
/api/v1/tokens/{token_id}`` (the listing hands schemathesis the id of the token it runs with, and
revoking it turns the rest of the run into 401s) and ``POST /api/v1/authorities/{name}/revoke``
(the listing hands it the default CA's name; a revoked CA makes every later issuance a 409 and
/readyz a 503). The issuer and reader runs send both (and are refused with 403); the admin
action itself is tested in tests/core/test_ca_guard.py.
Time: CA_SCHEMATHESIS_SECONDS per run (default 20), six runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..live import LiveServer, create_token, server_tracebacks

pytestmark = pytest.mark.slow

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
HOOKS = Path(__file__).parent.parent / "schemathesis_hooks.py"
SECONDS = int(os.environ.get("CA_SCHEMATHESIS_SECONDS", "20"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",
    ]
)


def _token(live: LiveServer, role: str) -> str:
    if role == "admin":
        return create_token(live, "admin", name="schemathesis-admin")[0]
    if role == "issuer":
        return create_token(
            live, "issuer", name="schemathesis-issuer", allowed_names=["*.st.example.test"]
        )[0]
    return create_token(live, "reader", name="schemathesis-reader")[0]


@pytest.mark.parametrize("role", ["admin", "issuer", "reader"])
def test_schemathesis_finds_nothing(live: LiveServer, role: str, tmp_path: Path) -> None:
    token = _token(live, role)
    before = server_tracebacks(live)
    cmd = [
        SCHEMATHESIS,
        "run",
        f"{live.base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-time",
        str(SECONDS),
        "--seed",
        "20261201",
        "--workers",
        "1",
        "--request-timeout",
        "30",
    ]
    if role == "admin":
        cmd += [
            "--exclude-name",
            "DELETE /api/v1/tokens/{token_id}",
            "--exclude-name",
            "POST /api/v1/authorities/{name}/revoke",
        ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"}
    result = subprocess.run(
        cmd,
        cwd=tmp_path,  # its report directory and cache stay out of the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=SECONDS + 180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert "passed" in output, output[-3000:]
    assert server_tracebacks(live) == before, live.log()[-3000:]
