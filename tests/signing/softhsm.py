"""SoftHSM2 tokens for the PKCS#11 tests: a token directory of its own, tokens made with
``softhsm2-util``, and the settings and environment that point ca-service at one.

SoftHSM reads ``SOFTHSM2_CONF`` when the library is initialised, so the tests of this process
share one configuration (set for the session) and tell their tokens apart by label; a server
or CLI started as a subprocess may get a configuration and token directory of its own (the
token-failure test moves that directory away and back).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import run

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4321-test-pin"
SO_PIN = "87654321"


def require_softhsm() -> None:
    if not Path(MODULE).is_file() or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM2 is required for the PKCS#11 tests (apt-get install softhsm2)")


@dataclass(frozen=True)
class SoftHSM:
    """One SoftHSM configuration: its file and its token directory."""

    conf: Path
    tokendir: Path

    @classmethod
    def create(cls, directory: Path) -> SoftHSM:
        require_softhsm()
        tokendir = directory / "tokens"
        tokendir.mkdir(parents=True, exist_ok=True)
        conf = directory / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        return cls(conf, tokendir)

    def new_token(self, prefix: str = "ca") -> str:
        """A fresh token (a free slot initialised); returns its label."""
        label = f"{prefix}-{secrets.token_hex(4)}"
        result = run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                PIN,
            ],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return label

    def env(self, label: str, *, pin: str = PIN) -> dict[str, str]:
        """What a ca-service process needs to use token ``label`` of this configuration."""
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "CA_KEY_BACKEND": "pkcs11",
            "CA_PKCS11_MODULE": MODULE,
            "CA_PKCS11_TOKEN_LABEL": label,
            "CA_PKCS11_PIN": pin,
        }
