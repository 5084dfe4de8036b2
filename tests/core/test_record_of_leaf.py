"""The record an issuance stores is built from the approved template (record_of_leaf), not read
back out of the certificate (record_for): the two must never disagree, or search, the UI and
every audit would describe a certificate other than the one signed. Each case issues through
the real core and compares the stored record with what the certificate itself says."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ca_service.core.context import record_for
from ca_service.core.facade import Core
from ca_service.domain import CertificateRecord, KeyType

from ..conftest import ADMIN
from ..helpers import build_csr, make_key, ocsp_request_for


def _read_back(record: CertificateRecord) -> CertificateRecord:
    cert = x509.load_der_x509_certificate(record.der)
    return record_for(cert, record.authority, record.profile, record.requester, record.created_at)


def _assert_same(ca: Core, record: CertificateRecord) -> None:
    assert record == _read_back(record)
    assert ca.get_certificate(record.serial) == record


CSR_CASES = [
    # Upper-case and IDN names are normalised by policy before they reach the template.
    ("Svc.Example.Test", [x509.DNSName("Svc.Example.Test"), x509.DNSName("b.example.test")]),
    ("bücher.example.test", [x509.DNSName("xn--bcher-kva.example.test")]),
    # An empty subject: the names are all in a critical SAN.
    (None, [x509.DNSName("nocn.example.test")]),
    (
        "addr.example.test",
        [
            x509.DNSName("addr.example.test"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.IPAddress(ipaddress.ip_address("2001:db8:0:0:0:0:0:1")),
        ],
    ),
]


@pytest.mark.parametrize(("common_name", "names"), CSR_CASES)
def test_csr_issuance_record_matches_certificate(
    ca: Core, common_name: str | None, names: list[x509.GeneralName]
) -> None:
    csr = build_csr(make_key("p256"), common_name, names)
    issued = ca.issue_from_csr(csr.public_bytes(serialization.Encoding.PEM), ADMIN)
    _assert_same(ca, issued.record)


def test_client_names_and_extra_names_match(ca: Core) -> None:
    csr = build_csr(
        make_key("p384"),
        "Bob",
        [x509.RFC822Name("bob@example.test"), x509.UniformResourceIdentifier("spiffe://t/bob")],
    )
    pem = csr.public_bytes(serialization.Encoding.PEM)
    issued = ca.issue_from_csr(pem, ADMIN, profile="client")
    _assert_same(ca, issued.record)
    assert issued.record.sans == ("email:bob@example.test", "uri:spiffe://t/bob")


@pytest.mark.parametrize(
    "key_type", [KeyType.ECDSA_P256, KeyType.ECDSA_P384, KeyType.ED25519, KeyType.RSA_2048]
)
def test_new_key_record_matches_certificate(ca: Core, key_type: KeyType) -> None:
    issued = ca.issue_with_new_key(
        ADMIN, common_name="k.example.test", names=["k.example.test", "ip:10.0.0.1"],
        key_type=key_type, profile="peer",
    )  # fmt: skip
    _assert_same(ca, issued.record)
    assert issued.record.key_type == key_type.value


def test_ocsp_responder_record_matches_certificate(ca: Core) -> None:
    issued = ca.issue_with_new_key(ADMIN, common_name="o.example.test")
    leaf = x509.load_der_x509_certificate(issued.record.der)
    answer = ca.answer_ocsp(ocsp_request_for(leaf, ca.authority_certificate()))
    response = ocsp.load_der_ocsp_response(answer.der)
    responder = response.certificates[0]
    assert isinstance(responder.public_key(), ec.EllipticCurvePublicKey)
    stored = ca.get_certificate(format(responder.serial_number, "x"))
    assert stored.profile == "ocsp-responder"
    _assert_same(ca, stored)
