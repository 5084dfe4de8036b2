"""revocation_url: the CRL, OCSP and caIssuers URLs certificates carry may differ from
public_url, so that an https public_url (ACME) still gives http revocation URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from ca_service.config import load_settings
from ca_service.domain import Actor
from ca_service.errors import ConfigError

from ..conftest import PASSPHRASE, make_settings, new_ca

ADMIN = Actor("admin")


def _urls(pem: str) -> tuple[str, str, str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    by_method = {d.access_method: d.access_location.value for d in aia}
    crl = cdp[0].full_name[0].value  # type: ignore[index]
    return (
        str(crl),
        str(by_method[AuthorityInformationAccessOID.CA_ISSUERS]),
        str(by_method[AuthorityInformationAccessOID.OCSP]),
    )


def test_certificates_carry_revocation_url_not_public_url(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(
        tmp_path,
        db_url,
        public_url="https://ca.example.test:8443",
        revocation_url="http://ca.example.test",
    )
    ca = new_ca(settings)
    try:
        issued = ca.issue_with_new_key(ADMIN, names=["a.example.test"])
    finally:
        ca.db.dispose()
    assert _urls(issued.certificate_pem) == (
        "http://ca.example.test/ca/default/crl",
        "http://ca.example.test/ca/default/ca.cer",
        "http://ca.example.test/ocsp",
    )


def test_without_it_certificates_carry_public_url(tmp_path: Path, db_url: str) -> None:
    ca = new_ca(make_settings(tmp_path, db_url, public_url="http://ca.internal:8000"))
    try:
        issued = ca.issue_with_new_key(ADMIN, names=["a.example.test"])
    finally:
        ca.db.dispose()
    assert _urls(issued.certificate_pem)[2] == "http://ca.internal:8000/ocsp"


@pytest.mark.parametrize("bad", ["ftp://x", "ca.example.test", "http://"])
def test_a_bad_revocation_url_stops_the_service(bad: str) -> None:
    with pytest.raises(ConfigError, match="revocation_url"):
        load_settings({"CA_REVOCATION_URL": bad, "CA_KEY_PASSPHRASE": PASSPHRASE.decode()})
