"""lego (Go, from Debian) against a live ``ca-service serve --tls`` on SQLite and PostgreSQL:
tls-alpn-01 on a loopback port, dns-01 through its ``exec`` provider writing TXT records into
the LoopbackDNS that lego and the server both use as resolver, a wildcard over dns-01, and an
account bound with EAB (``--eab --kid --hmac``) in every case since the server requires it.

Every certificate lego wrote is checked by `openssl verify` against the root from the store and
by pkilint.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..live import LiveServer, free_port
from .clients import (
    Lego,
    acme_serials,
    acme_stack,
    api_certificate,
    assert_good_certificate,
    create_eab,
    directory_url,
    write_root,
)
from .dns_server import LoopbackDNS

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    live: LiveServer
    root: Path
    eab: tuple[str, str]
    tls_port: int
    dns: LoopbackDNS
    home: Path

    def lego(self, **solver: Any) -> Lego:
        return Lego(
            self.home / secrets.token_hex(3),
            directory_url(self.live.base_url),
            self.root,
            eab=self.eab,
            **solver,
        )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[tuple[LiveServer, Path, int, LoopbackDNS]]:
    """One server (and its LoopbackDNS) per backend for the module; each test its own lego."""
    tls_port = free_port()
    base = tmp_path_factory.mktemp("acme-lego")
    # Wildcards need both the profile's leave and the EAB key's (dns-01 only, RFC 8555 8.4).
    config = base / "ca-service.toml"
    config.write_text("[profiles.server]\nallow_wildcards = true\n")
    extra = {"CA_CONFIG_FILE": str(config)}
    with acme_stack(base, module_db_url, tlsalpn01_port=tls_port, extra_env=extra) as (live, dns):
        root = write_root(live, base / "trust")
        yield live, root, tls_port, dns


@pytest.fixture
def setup(stack: tuple[LiveServer, Path, int, LoopbackDNS], tmp_path: Path) -> Setup:
    """A lego home of its own, and an EAB key for its account (a key binds one account)."""
    live, root, tls_port, dns = stack
    eab = create_eab(live, ["*.acme.test"], name="lego", allow_wildcards=True)
    return Setup(live, root, eab, tls_port, dns, tmp_path / "lego")


def _name(label: str) -> str:
    return f"{label}-{secrets.token_hex(3)}.acme.test"


def _dns_lego(setup: Setup) -> Lego:
    return setup.lego(dns_port=setup.dns.port, records=Path(setup.dns.records_path))


def test_lego_obtains_and_renews_over_tls_alpn01(setup: Setup, openssl: str) -> None:
    name = _name("alpn")
    before = acme_serials(setup.live)
    lego = setup.lego(tls_port=setup.tls_port)

    got = lego.run(name)
    assert got.ok, got.explain()
    assert got.issued is not None, got.explain()
    cert = assert_good_certificate(openssl, setup.root, got.issued, [name])
    record = api_certificate(setup.live, got.issued.serial_hex)
    assert str(record["requester"]).startswith("acme:"), record
    assert acme_serials(setup.live) == before | {got.issued.serial}

    renewed = lego.renew(name)
    assert renewed.ok, renewed.explain()
    assert renewed.issued is not None
    again = assert_good_certificate(openssl, setup.root, renewed.issued, [name])
    assert again.serial_number != cert.serial_number
    # (lego rewrote the files in place: the first certificate is the one parsed before.)
    assert acme_serials(setup.live) == before | {cert.serial_number, again.serial_number}


def test_lego_obtains_over_dns01_through_the_exec_provider(setup: Setup, openssl: str) -> None:
    name = _name("dns")
    got = _dns_lego(setup).run(name)
    assert got.ok, got.explain()
    assert got.issued is not None, got.explain()
    assert_good_certificate(openssl, setup.root, got.issued, [name])
    assert str(api_certificate(setup.live, got.issued.serial_hex)["requester"]).startswith("acme:")
    # lego cleaned up after itself through the hook: no challenge record is left behind.
    from .dns_server import read_records

    records = read_records(Path(setup.dns.records_path))
    assert not records.get(f"_acme-challenge.{name}.", {}).get("TXT"), records


def test_lego_obtains_a_wildcard_over_dns01(setup: Setup, openssl: str) -> None:
    base = f"wild-{secrets.token_hex(3)}.acme.test"
    names = [f"*.{base}", base]
    got = _dns_lego(setup).run(*names)
    assert got.ok, got.explain()
    assert got.issued is not None, got.explain()
    assert_good_certificate(openssl, setup.root, got.issued, names)


def test_lego_obtains_the_exact_wildcard_name(setup: Setup, openssl: str) -> None:
    """``*.wild.acme.test`` alone: a wildcard order whose authorization is for
    ``wild.acme.test`` with ``wildcard: true`` (RFC 8555 section 7.1.3), dns-01 only."""
    got = _dns_lego(setup).run("*.wild.acme.test")
    assert got.ok, got.explain()
    assert got.issued is not None, got.explain()
    assert_good_certificate(openssl, setup.root, got.issued, ["*.wild.acme.test"])


def test_lego_without_eab_is_refused_when_the_server_requires_it(setup: Setup) -> None:
    before = acme_serials(setup.live)
    lego = Lego(
        setup.home / "no-eab",
        directory_url(setup.live.base_url),
        setup.root,
        tls_port=setup.tls_port,
    )
    refused = lego.run(_name("noeab"))
    assert not refused.ok, refused.explain()
    # lego reads meta.externalAccountRequired and stops, or relays the server's problem type.
    said = refused.proc.stderr.lower()
    assert "externalaccountrequired" in said or "external account" in said, refused.explain()
    assert refused.issued is None
    assert acme_serials(setup.live) == before
