"""certbot, the reference ACME client, against a live ``ca-service serve --tls`` on SQLite and
PostgreSQL: it obtains over http-01 (its standalone listener on loopback), renews when forced,
revokes with a reason, and renews on its own when ARI (RFC 9773) says a certificate the admin
revoked must be replaced.

Names are under ``.acme.test``: the server resolves them through the test's LoopbackDNS, which
answers 127.0.0.1, so its http-01 request reaches certbot's listener on the port it was told.
Every certificate certbot wrote is checked by `openssl verify` against the root from the store
and by pkilint.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from ..live import LiveServer, fetch_crl, free_port
from .clients import (
    Certbot,
    acme_serials,
    acme_stack,
    api_certificate,
    assert_good_certificate,
    create_eab,
    directory_url,
    write_root,
)

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    live: LiveServer
    certbot: Certbot
    root: Path
    eab: tuple[str, str]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[tuple[LiveServer, Path, int]]:
    """One server per backend for the module; each test has a certbot of its own."""
    http_port = free_port()
    base = tmp_path_factory.mktemp("acme-certbot")
    with acme_stack(base, module_db_url, http01_port=http_port) as (live, _dns):
        root = write_root(live, base / "trust")
        yield live, root, http_port


@pytest.fixture
def setup(stack: tuple[LiveServer, Path, int], tmp_path: Path) -> Setup:
    """A certbot of its own, and an EAB key for its account (a key binds one account)."""
    live, root, http_port = stack
    eab = create_eab(live, ["*.acme.test"], name="certbot")
    certbot = Certbot(tmp_path / "certbot", directory_url(live.base_url), root, http_port)
    return Setup(live, certbot, root, eab)


def _name(label: str) -> str:
    return f"{label}-{secrets.token_hex(3)}.acme.test"


def _crl_of(live: LiveServer, cert: x509.Certificate) -> x509.CertificateRevocationList:
    """The CRL the certificate points at, fetched from that URL's path (and pkilint-clean)."""
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = cdp[0].full_name[0].value
    return fetch_crl(live, urlsplit(url).path)  # type: ignore[no-any-return]


def test_certbot_obtains_renews_and_revokes_over_http01(setup: Setup, openssl: str) -> None:
    name = _name("journey")
    before = acme_serials(setup.live)

    got = setup.certbot.certonly(name, eab=setup.eab)
    assert got.ok, got.explain()
    assert got.issued is not None, got.explain()
    first = assert_good_certificate(openssl, setup.root, got.issued, [name])
    record = api_certificate(setup.live, got.issued.serial_hex)
    assert str(record["requester"]).startswith("acme:"), record
    assert record["status"] == "valid"
    assert acme_serials(setup.live) == before | {got.issued.serial}

    renewed = setup.certbot.renew(name, force=True)
    assert renewed.ok, renewed.explain()
    assert renewed.issued is not None
    second = assert_good_certificate(openssl, setup.root, renewed.issued, [name])
    assert second.serial_number != first.serial_number
    assert acme_serials(setup.live) == before | {first.serial_number, second.serial_number}
    # Same account: the renewal is requested by the requester of the first certificate.
    assert (
        api_certificate(setup.live, renewed.issued.serial_hex)["requester"] == (record["requester"])
    )

    revoked = setup.certbot.revoke(name, reason="keycompromise")
    assert revoked.ok, revoked.explain()
    shown = api_certificate(setup.live, f"{second.serial_number:x}")
    assert shown["status"] == "revoked", shown
    assert shown["revocation_reason"] == "keyCompromise", shown
    # Only the certificate certbot revoked: the first one is untouched.
    assert api_certificate(setup.live, f"{first.serial_number:x}")["status"] == "valid"

    crl = _crl_of(setup.live, second)
    entry = crl.get_revoked_certificate_by_serial_number(second.serial_number)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is None


def test_plain_renew_keeps_a_fresh_certificate(setup: Setup) -> None:
    """The counterpart of the ARI replacement below: certbot asks ARI, the window is ahead,
    and nothing is issued."""
    name = _name("fresh")
    got = setup.certbot.certonly(name, eab=setup.eab)
    assert got.ok and got.issued is not None, got.explain()
    serial = got.issued.serial_hex
    count = acme_serials(setup.live)

    kept = setup.certbot.renew(name)
    assert kept.ok, kept.explain()
    assert "renewal-info/" in kept.log_text, kept.explain()  # it did ask the server
    assert "not yet due" in kept.proc.stdout + kept.proc.stderr, kept.explain()
    assert kept.issued is not None and kept.issued.serial_hex == serial
    assert acme_serials(setup.live) == count


@pytest.mark.parametrize("reason", ["keyCompromise", "certificateHold"])
def test_plain_renew_replaces_a_certificate_the_admin_revoked_because_of_ari(
    setup: Setup, openssl: str, reason: str
) -> None:
    """Revoked, or only on hold: ARI's window is in the past either way."""
    name = _name("ari")
    got = setup.certbot.certonly(name, eab=setup.eab)
    assert got.ok and got.issued is not None, got.explain()
    old = got.issued.serial_hex

    reply = setup.live.request(
        "POST",
        f"/api/v1/certificates/{old}/revoke",
        token=setup.live.admin_token,
        body={"reason": reason},
    )
    assert reply.status == 200, reply.body[:500]
    assert api_certificate(setup.live, old)["revocation_reason"] == reason

    # No --force-renewal: the certificate is far from expiry, so only ARI can make certbot act.
    renewed = setup.certbot.renew(name)
    assert renewed.ok, renewed.explain()
    assert renewed.issued is not None
    new = assert_good_certificate(openssl, setup.root, renewed.issued, [name])
    assert f"{new.serial_number:x}" != old, renewed.explain()
    # certbot's debug log shows the renewalInfo fetch that decided it, and that the decision
    # was not its OCSP check (which it only consults when ARI does not say "renew").
    assert "renewal-info/" in renewed.log_text, renewed.explain()
    assert "Should renew, certificate is revoked" not in renewed.log_text
    assert api_certificate(setup.live, f"{new.serial_number:x}")["status"] == "valid"
