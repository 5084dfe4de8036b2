"""Fixtures for the ACME tests: a loopback DNS server, started and stopped per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .dns_server import LoopbackDNS


@pytest.fixture
def loopback_dns(tmp_path: Path) -> Iterator[LoopbackDNS]:
    """An authoritative DNS server on 127.0.0.1 whose every unlisted name has A 127.0.0.1.

    Point a client at ``loopback_dns.resolver`` (host, port); change records with ``set``/``add``/
    ``remove``, or from another process through ``loopback_dns.records_path``.
    """
    server = LoopbackDNS(tmp_path / "dns-records.json", default_a="127.0.0.1")
    server.start()
    try:
        yield server
    finally:
        server.stop()
