"""Running the real `ca-service request` as a pipeline would: a subprocess, its own environment."""

from __future__ import annotations

import os
import subprocess

from ..live import CA_SERVICE


def request(
    *args: str, token: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `ca-service request`, with a clean environment (no CA_* from the caller)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CA_", "ACTIONS_"))}
    if token is not None:
        environ["CA_TOKEN"] = token
    environ.update(env or {})
    return subprocess.run(
        [CA_SERVICE, "request", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
