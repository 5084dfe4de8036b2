"""Issue items 4 and 9: CSR intake, server-side key generation, and bad input that leaves no trace.

These run on both databases: a refused request must not leave a row in either.
"""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.crypto.csr import parse_csr
from ca_service.crypto.keys import public_key_matches
from ca_service.domain import KeyType, RevocationReason
from ca_service.errors import BadRequest, CAError, NotFound, PolicyRejected
from ca_service.policy.names import NameConstraintsSpec
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import AuditRepository

from ..conftest import ADMIN, new_ca
from ..helpers import (
    all_stored_bytes,
    build_csr,
    counts,
    csr_der,
    csr_pem,
    make_key,
    secret_fragments,
    tamper_signature,
    tree_bytes,
)


def test_pem_and_der_csrs_are_accepted(ca: Core) -> None:
    key = make_key("p256")
    for data in (csr_pem(key, "pem.example.test"), csr_der(key, "der.example.test")):
        issued = ca.issue_from_csr(data, ADMIN)
        cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
        assert public_key_matches(key, cert.public_key())  # type: ignore[arg-type]
        assert issued.private_key_pem is None and issued.pkcs12 is None
    # A PEM CSR passed as str works too.
    assert ca.issue_from_csr(csr_pem(key, "str.example.test").decode(), ADMIN).record.serial


def test_csr_names_are_normalised() -> None:
    key = make_key("p256")
    names = [
        x509.DNSName("WWW.Example.Test"),
        x509.DNSName("xn--bcher-kva.example.test"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
        x509.RFC822Name("ops@Example.Test"),
        x509.UniformResourceIdentifier("spiffe://cluster.test/ns/a"),
    ]
    der = build_csr(key, "Svc.Example.Test", names).public_bytes(serialization.Encoding.DER)
    parsed = parse_csr(der)
    assert [str(n) for n in parsed.names] == [
        "dns:www.example.test",
        "dns:xn--bcher-kva.example.test",
        "ip:192.0.2.1",
        "email:ops@example.test",
        "uri:spiffe://cluster.test/ns/a",
    ]
    assert parsed.common_name == "Svc.Example.Test"
    assert parsed.key_type is KeyType.ECDSA_P256


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("rsa1024", "too small"),
        ("secp521r1", "not supported"),
        ("secp256k1", "not supported"),
    ],
)
def test_unsupported_keys_refused(kind: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_csr(csr_pem(make_key(kind), "a.example.test"))


def test_rsa_exponent_other_than_65537_refused() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(BadRequest, match="65537"):
        parse_csr(csr_pem(key, "a.example.test"))


def test_tampered_signature_refused() -> None:
    with pytest.raises(BadRequest, match="signature does not verify"):
        parse_csr(tamper_signature(csr_der(make_key("p256"), "a.example.test")))


@pytest.mark.parametrize(
    "names",
    [
        [x509.DNSName("exa mple.test")],
        [x509.DNSName("a..example.test")],
        [x509.DNSName("*.*.example.test")],
        [x509.RFC822Name("not-an-address")],
        [x509.UniformResourceIdentifier("no-scheme")],
        [x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))],
    ],
    ids=["space", "empty-label", "double-wildcard", "email", "uri", "dirname"],
)
def test_malformed_san_names_refused(names: list[x509.GeneralName]) -> None:
    with pytest.raises(BadRequest):
        parse_csr(build_csr(make_key("p256"), None, names).public_bytes(serialization.Encoding.PEM))


def test_two_common_names_refused() -> None:
    key = make_key("p256")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "a.example.test"),
            x509.NameAttribute(NameOID.COMMON_NAME, "b.example.test"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    with pytest.raises(BadRequest, match="more than one common name"):
        parse_csr(csr.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------------------- server-side keys


@pytest.mark.parametrize("key_type", [KeyType.ECDSA_P256, KeyType.ED25519, KeyType.RSA_2048])
def test_generated_key_returned_with_pkcs12_and_never_stored(
    ca: Core, key_type: KeyType
) -> None:
    issued = ca.issue_with_new_key(
        ADMIN,
        common_name="gen.example.test",
        names=["10.1.1.1"],
        key_type=key_type,
        pkcs12_passphrase=b"p12-secret",
    )
    assert issued.private_key_pem is not None
    key = serialization.load_pem_private_key(issued.private_key_pem.encode(), password=None)
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    assert public_key_matches(key, cert.public_key())  # type: ignore[arg-type]
    assert issued.record.key_type == key_type.value

    assert issued.pkcs12 is not None
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(issued.pkcs12, b"wrong")
    p12_key, p12_cert, p12_chain = pkcs12.load_key_and_certificates(issued.pkcs12, b"p12-secret")
    assert p12_cert == cert
    assert public_key_matches(p12_key, cert.public_key())  # type: ignore[arg-type]
    # The PKCS#12 bag carries the whole path, root included (as openssl pkcs12 -chain does).
    assert issued.root_pem is not None
    assert [c.public_bytes(serialization.Encoding.PEM).decode() for c in p12_chain] == [
        *issued.chain_pem,
        issued.root_pem,
    ]

    stored = all_stored_bytes(ca.db) + tree_bytes(ca.settings.data_dir)
    for fragment in secret_fragments(key):
        assert fragment not in stored
    # The search does find what is stored: the certificate itself.
    assert cert.public_bytes(serialization.Encoding.DER) in stored


def test_generated_key_without_pkcs12(ca: Core) -> None:
    issued = ca.issue_with_new_key(ADMIN, common_name="plain.example.test")
    assert issued.pkcs12 is None and issued.private_key_pem


# ---------------------------------------------------------------------------- item 9: no trace


def _good_der() -> bytes:
    return csr_der(make_key("p256"), "ok.example.test")


BAD_CSRS = {
    "truncated-der": lambda: _good_der()[:150],
    "truncated-pem": lambda: csr_pem(make_key("p256"), "ok.example.test")[:-120],
    "garbage": lambda: b"\x30\x82\x01\x00 this is not a CSR at all",
    "garbage-pem": lambda: (
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    ),
    "empty": lambda: b"",
    "wrong-signature": lambda: tamper_signature(_good_der()),
    "rsa-1024": lambda: csr_der(make_key("rsa1024"), "ok.example.test"),
    "secp521r1": lambda: csr_der(make_key("secp521r1"), "ok.example.test"),
    "secp256k1": lambda: csr_der(make_key("secp256k1"), "ok.example.test"),
}


@pytest.mark.parametrize("case", list(BAD_CSRS))
def test_bad_csr_clear_error_and_no_record(ca: Core, case: str) -> None:
    before = counts(ca.db)
    with pytest.raises(BadRequest) as info:
        ca.issue_from_csr(BAD_CSRS[case](), ADMIN)
    assert info.value.detail and "\n" not in info.value.detail
    assert counts(ca.db) == before


REFUSED = [
    ("san-outside-policy", {"names": ["example.org"]}, PolicyRejected),
    ("too-long-validity", {"validity_days": 398}, PolicyRejected),
    ("wildcard", {"names": ["*.example.test"]}, PolicyRejected),
    ("invalid-idn", {"names": ["a\u200db.example.test"]}, BadRequest),
    ("non-ascii-email", {"names": ["email:jürgen@example.test"]}, BadRequest),
    ("invalid-a-label", {"names": ["xn--zz.example.test"]}, BadRequest),
    ("bad-ip", {"names": ["ip:10.0.0.300"]}, BadRequest),
]


@pytest.mark.parametrize(("case", "kwargs", "error"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_request_clear_error_and_no_record(
    settings: Settings, case: str, kwargs: dict[str, object], error: type[CAError]
) -> None:
    ca = new_ca(settings, constraints=NameConstraintsSpec.parse(["example.test"]))
    try:
        kwargs = dict(kwargs)
        names = list(kwargs.pop("names", []))  # type: ignore[call-overload]
        before = counts(ca.db)
        with pytest.raises(error) as info:
            ca.issue_from_csr(
                csr_pem(make_key("p256"), "ok.example.test"), ADMIN, extra_names=names, **kwargs
            )
        assert info.value.detail and "\n" not in info.value.detail
        if error is PolicyRejected:
            assert info.value.rule
        with pytest.raises(error):
            ca.issue_with_new_key(ADMIN, common_name="ok.example.test", names=names, **kwargs)
        # Nothing issued; a policy refusal is itself audited, once per attempt, with its rule.
        refusals = 2 if error is PolicyRejected else 0
        assert counts(ca.db) == (before[0], before[1] + refusals)
        with unit_of_work(ca.db) as s:
            events = AuditRepository(s).list(action="policy.refused")
        assert [(e.details or {})["rule"] for e in events] == [info.value.rule] * refusals
    finally:
        ca.db.dispose()


def test_unknown_serial_clear_error_and_nothing_changed(ca: Core) -> None:
    ca.issue_with_new_key(ADMIN, common_name="known.example.test")
    before = counts(ca.db)
    for call in (
        lambda: ca.revoke("abcdef0123", RevocationReason.KEY_COMPROMISE, ADMIN),
        lambda: ca.get_certificate("abcdef0123"),
        lambda: ca.release_hold("abcdef0123", ADMIN),
    ):
        with pytest.raises(NotFound, match="no certificate with serial"):
            call()
    with pytest.raises(BadRequest, match="not a hexadecimal serial"):
        ca.revoke("not-a-serial", RevocationReason.KEY_COMPROMISE, ADMIN)
    assert counts(ca.db) == before


def test_csr_too_large_refused() -> None:
    with pytest.raises(BadRequest, match="larger than"):
        parse_csr(b"\x30" * (64 * 1024 + 1))
