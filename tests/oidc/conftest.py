"""Fixtures of the OIDC tests: a loopback issuer (see issuer.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .issuer import OIDCIssuer


@pytest.fixture
def oidc_issuer() -> Iterator[OIDCIssuer]:
    """A fresh issuer per test (its own keys and port)."""
    with OIDCIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def module_issuer() -> Iterator[OIDCIssuer]:
    """One issuer for a module's live server."""
    with OIDCIssuer() as issuer:
        yield issuer
