"""RFC 8555 section 7.6 (revokeCert) and RFC 9773 (renewalInfo, ``replaces``) on the wire,
with the CRL and OCSP that follow (live `serve --tls`, SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from tests.live import fetch_crl, list_all, server_tracebacks

from .acme_client import (
    AccountKey,
    ACMEServerUnderTest,
    assert_acme_problem,
    b64,
    issue,
    key_from_private,
    live_acme,
    new_key,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def acme(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEServerUnderTest]:
    with live_acme(request.param, tmp_path_factory.mktemp(f"revoke-{request.param}")) as server:
        yield server
        assert server_tracebacks(server.live) == 0, server.live.log()[-4000:]


@pytest.fixture(scope="module")
def account(acme: ACMEServerUnderTest) -> tuple[AccountKey, str]:
    key = new_key()
    return key, acme.client.account(key)


Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey, dict[str, Any]]


def _issue(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str], *names: str, **extra: Any
) -> Issued:
    key, kid = account
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    _, final, chain = issue(acme.client, key, kid, list(names), acme.http01, leaf_key, **extra)
    cert = x509.load_pem_x509_certificate(chain.encode())
    return cert, leaf_key, final


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _revoke(
    acme: ACMEServerUnderTest,
    cert: x509.Certificate,
    key: AccountKey,
    kid: str | None,
    reason: Any = None,
) -> Any:
    payload: dict[str, Any] = {"certificate": b64(_der(cert))}
    if reason is not None:
        payload["reason"] = reason
    return acme.client.post(acme.client.directory["revokeCert"], payload, key, kid=kid)


def _record(acme: ACMEServerUnderTest, cert: x509.Certificate) -> dict[str, Any]:
    serial = format(cert.serial_number, "x")
    matches = [
        c
        for c in list_all(acme.live, "/api/v1/certificates")
        if int(c["serial"], 16) == int(serial, 16)
    ]
    assert len(matches) == 1, serial
    found: dict[str, Any] = matches[0]
    return found


# ---------------------------------------------------------------------------- revokeCert (7.6)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "unspecified"),
        (1, "keyCompromise"),
        (3, "affiliationChanged"),
        (4, "superseded"),
        (5, "cessationOfOperation"),
        (6, "certificateHold"),
        (9, "privilegeWithdrawn"),
    ],
)
def test_revoke_by_the_ordering_account_with_each_reason(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str], code: int, name: str
) -> None:
    key, kid = account
    cert, _, _ = _issue(acme, account, "revoke.acme.test")
    reply = _revoke(acme, cert, key, kid, code)
    assert reply.status == 200, reply.body
    assert reply.headers.get("replay-nonce") and reply.link("index")
    record = _record(acme, cert)
    assert record["status"] == "revoked"
    assert record["revocation_reason"] == name


def test_reason_defaults_to_unspecified(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    cert, _, _ = _issue(acme, account, "revoke.acme.test")
    assert _revoke(acme, cert, key, kid).status == 200
    assert _record(acme, cert)["revocation_reason"] == "unspecified"


def test_bad_reasons_and_twice(acme: ACMEServerUnderTest, account: tuple[AccountKey, str]) -> None:
    key, kid = account
    cert, _, _ = _issue(acme, account, "revoke.acme.test")
    for reason in (7, 11, -1, "1", True, 1.0):
        assert_acme_problem(_revoke(acme, cert, key, kid, reason), 400, "badRevocationReason")
    assert _record(acme, cert)["status"] == "valid"
    assert _revoke(acme, cert, key, kid, 4).status == 200
    assert_acme_problem(_revoke(acme, cert, key, kid, 4), 400, "alreadyRevoked")
    assert_acme_problem(_revoke(acme, cert, key, kid, 1), 400, "alreadyRevoked")
    assert _record(acme, cert)["revocation_reason"] == "superseded"


def test_hold_then_revoke_for_good(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    cert, _, _ = _issue(acme, account, "revoke.acme.test")
    assert _revoke(acme, cert, key, kid, 6).status == 200
    assert _revoke(acme, cert, key, kid, 1).status == 200
    assert _record(acme, cert)["revocation_reason"] == "keyCompromise"


def test_bad_certificate_members(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    url = acme.client.directory["revokeCert"]
    for payload in ({}, {"certificate": "***"}, {"certificate": b64(b"not DER")}):
        assert_acme_problem(acme.client.post(url, payload, key, kid=kid), 400, "malformed")


def test_another_account_without_authorizations_is_refused_and_audited(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    cert, _, _ = _issue(acme, account, "revoke.acme.test")
    other = new_key()
    other_kid = acme.client.account(other)
    assert_acme_problem(_revoke(acme, cert, other, other_kid, 1), 403, "unauthorized")
    assert _record(acme, cert)["status"] == "valid"
    actor = f"acme:{other_kid.rsplit('/', 1)[1]}"
    events = list_all(acme.live, f"/api/v1/audit?actor={actor}&action=auth.refused")
    assert len(events) == 1, events
    assert "acme.revoke_not_authorized" in str(events[0]), events[0]


def test_another_account_with_authorizations_for_every_name_may_revoke(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    """Section 7.6: an account holding valid authorizations for all the names may revoke."""
    cert, _, _ = _issue(acme, account, "shared.acme.test")
    other = new_key()
    other_kid = acme.client.account(other)
    issue(acme.client, other, other_kid, ["shared.acme.test"], acme.http01)
    assert _revoke(acme, cert, other, other_kid, 5).status == 200
    assert _record(acme, cert)["revocation_reason"] == "cessationOfOperation"


def test_revoke_with_the_certificates_own_key(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    cert, leaf_key, _ = _issue(acme, account, "ownkey.acme.test")
    stranger = new_key()
    assert_acme_problem(_revoke(acme, cert, stranger, None, 1), 403, "unauthorized")
    assert _record(acme, cert)["status"] == "valid"
    own = key_from_private(leaf_key, "ES256")
    reply = _revoke(acme, cert, own, None, 1)
    assert reply.status == 200, reply.body
    assert _record(acme, cert)["revocation_reason"] == "keyCompromise"


def test_certificate_of_another_ca_is_404(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    mine, _, _ = _issue(acme, account, "revoke.acme.test")
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "revoke.acme.test")])
    now = dt.datetime.now(dt.UTC)
    foreign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(mine.issuer)  # the same issuer name and serial: still not ours
        .public_key(private.public_key())
        .serial_number(mine.serial_number)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    assert_acme_problem(_revoke(acme, foreign, key, kid, 1), 404, "malformed")
    fresh = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    assert_acme_problem(_revoke(acme, fresh, key, kid, 1), 404, "malformed")
    assert _record(acme, mine)["status"] == "valid"


def test_crl_and_ocsp_after_revoke(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    cert, _, final = _issue(acme, account, "crl.acme.test")
    assert _revoke(acme, cert, key, kid, 1).status == 200
    crl = fetch_crl(acme.live)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    chain = acme.client.fetch(final["certificate"], key, kid).body.decode()
    issuer = x509.load_pem_x509_certificates(chain.encode())[1]
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303 (the CertID hash)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    reply = acme.live.request(
        "POST",
        "/ocsp",
        raw=request,
        headers={"Content-Type": "application/ocsp-request"},
        check_spec=False,
    )
    assert reply.status == 200
    answer = ocsp.load_der_ocsp_response(reply.body)
    assert answer.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.key_compromise


# ---------------------------------------------------------------------------- ARI (RFC 9773)


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1, written here from the RFC (not the server's helper)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    # The serial's DER INTEGER content octets: two's complement, minimal, positive.
    n = cert.serial_number
    length = (n.bit_length() + 8) // 8
    serial = n.to_bytes(length, "big")
    enc = base64.urlsafe_b64encode
    return f"{enc(aki.key_identifier).rstrip(b'=').decode()}.{enc(serial).rstrip(b'=').decode()}"


def _renewal_info(acme: ACMEServerUnderTest, ident: str) -> Any:
    return acme.client.get(f"{acme.client.directory['renewalInfo']}/{ident}")


def _window(reply: Any) -> tuple[dt.datetime, dt.datetime]:
    window = reply.json["suggestedWindow"]
    parse = dt.datetime.fromisoformat
    return parse(window["start"].replace("Z", "+00:00")), parse(
        window["end"].replace("Z", "+00:00")
    )


def test_renewal_info_of_a_fresh_certificate(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    cert, _, _ = _issue(acme, account, "ari.acme.test")
    reply = _renewal_info(acme, cert_id(cert))
    assert reply.status == 200, reply.body
    assert int(reply.headers["retry-after"]) > 0
    start, end = _window(reply)
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    third = before + (after - before) * 2 / 3
    assert third - dt.timedelta(seconds=1) <= start < end <= after
    assert start > dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("how", ["api", "acme", "hold"])
def test_renewal_info_after_revocation_is_in_the_past(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str], how: str
) -> None:
    key, kid = account
    cert, _, _ = _issue(acme, account, "ari.acme.test")
    if how == "api":
        serial = _record(acme, cert)["serial"]
        reply = acme.live.request(
            "POST",
            f"/api/v1/certificates/{serial}/revoke",
            token=acme.live.admin_token,
            body={"reason": "superseded"},
        )
        assert reply.status == 200, reply.body
    else:
        assert _revoke(acme, cert, key, kid, 6 if how == "hold" else 4).status == 200
    info = _renewal_info(acme, cert_id(cert))
    assert info.status == 200
    _, end = _window(info)
    assert end < dt.datetime.now(dt.UTC)


def test_renewal_info_bad_and_unknown_cert_ids(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    cert, _, _ = _issue(acme, account, "ari.acme.test")
    good = cert_id(cert)
    aki, serial = good.split(".")
    for bad in ("nodot", "a.b.c", f"{aki}.", f".{serial}", f"{aki}=.{serial}", "%%%.@@@"):
        reply = _renewal_info(acme, bad)
        assert reply.status == 400, (bad, reply.status, reply.body)
        assert reply.json["type"] == "urn:ietf:params:acme:error:malformed"
    unknown_serial = base64.urlsafe_b64encode(b"\x01\x02\x03").rstrip(b"=").decode()
    assert _renewal_info(acme, f"{aki}.{unknown_serial}").status == 404
    unknown_aki = base64.urlsafe_b64encode(b"\x00" * 20).rstrip(b"=").decode()
    assert _renewal_info(acme, f"{unknown_aki}.{serial}").status == 404


def test_replaces(acme: ACMEServerUnderTest, account: tuple[AccountKey, str]) -> None:
    key, kid = account
    c = acme.client
    old, _, _ = _issue(acme, account, "renew.acme.test", "renew2.acme.test")
    unrelated, _, _ = _issue(acme, account, "unrelated.acme.test")
    no_share = c.new_order(key, kid, "renew3.acme.test", replaces=cert_id(unrelated))
    assert_acme_problem(no_share, 400, "malformed")
    unknown = cert_id(old).split(".")[0] + ".AQID"
    assert_acme_problem(
        c.new_order(key, kid, "renew.acme.test", replaces=unknown), 404, "malformed"
    )
    assert_acme_problem(c.new_order(key, kid, "renew.acme.test", replaces="x.y"), 400, "malformed")
    new, _, final = _issue(acme, account, "renew.acme.test", replaces=cert_id(old))
    # RFC 9773 section 5: the order shows the CertID it was placed with.
    assert final["replaces"] == cert_id(old)
    assert _record(acme, old)["successor"] == _record(acme, new)["serial"]
    again = c.new_order(key, kid, "renew.acme.test", replaces=cert_id(old))
    assert_acme_problem(again, 409, "alreadyReplaced")


def test_renewal_info_serial_must_be_der(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    """RFC 9773 4.1: the serial part is the DER INTEGER's content octets: a padded
    (non-minimal) spelling of a real serial is not that certificate's CertID."""
    cert, _, _ = _issue(acme, account, "ari.acme.test")
    aki, _ = cert_id(cert).split(".")
    n = cert.serial_number
    padded = b"\x00" + n.to_bytes((n.bit_length() + 8) // 8, "big")
    enc = base64.urlsafe_b64encode(padded).rstrip(b"=").decode()
    reply = _renewal_info(acme, f"{aki}.{enc}")
    assert reply.status == 400, (reply.status, reply.body)


def test_replaces_of_another_accounts_certificate(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    """RFC 9773 section 5: the server SHOULD check that the replaced certificate was issued to
    the same account; another account must not mark someone else's certificate replaced."""
    theirs, _, _ = _issue(acme, account, "steal.acme.test")
    other = new_key()
    other_kid = acme.client.account(other)
    reply = acme.client.new_order(other, other_kid, "steal.acme.test", replaces=cert_id(theirs))
    assert_acme_problem(reply, 400, "malformed")
    assert _record(acme, theirs)["successor"] is None
    key, kid = account
    assert (
        acme.client.new_order(key, kid, "steal.acme.test", replaces=cert_id(theirs)).status == 201
    )
