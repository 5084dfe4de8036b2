"""crypto/ocsp_wire.py writes OCSP responses with crypto/der.py: the bytes must be exactly what
pyasn1's RFC 6960 module (pkilint's, and the encoder this replaced) makes of the same
structures, for every status, with and without a nonce, a reason, responder certificates and
several answers; and what it writes must parse back in `cryptography` and pyasn1."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ, useful
from pyasn1_alt_modules import rfc5280, rfc6960

from ca_service.crypto import ocsp_wire
from ca_service.crypto.ocsp_wire import CertRef, SingleAnswer
from ca_service.domain import RevocationReason

NOW = dt.datetime(2026, 12, 1, 22, 30, 5, 123456, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=12)
# ecdsa-with-SHA256, the AlgorithmIdentifier of a P-256 responder
ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


def _reference(
    answers: Sequence[SingleAnswer],
    produced_at: dt.datetime,
    key_hash: bytes,
    nonce_der: bytes | None,
    signature: bytes,
    certificates: Sequence[bytes],
) -> tuple[bytes, bytes]:
    """(ResponseData DER, OCSPResponse DER) as pyasn1 encodes them."""

    def gtime(value: dt.datetime) -> useful.GeneralizedTime:
        return useful.GeneralizedTime(value.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ"))

    data = rfc6960.ResponseData()
    responder = data["responderID"]
    responder["byKey"] = responder["byKey"].clone(key_hash)
    data["producedAt"] = gtime(produced_at)
    responses = data["responses"]
    for i, answer in enumerate(answers):
        single = rfc6960.SingleResponse()
        single["certID"], _ = decoder.decode(answer.ref.der, asn1Spec=rfc6960.CertID())
        status = single["certStatus"]
        if answer.status == "good":
            status["good"] = status["good"].clone("")
        elif answer.status == "revoked":
            assert answer.revoked_at is not None
            info = status["revoked"]
            info["revocationTime"] = gtime(answer.revoked_at)
            if answer.reason is not None and answer.reason is not RevocationReason.UNSPECIFIED:
                info["revocationReason"] = info["revocationReason"].clone(answer.reason.code)
        else:
            status["unknown"] = status["unknown"].clone("")
        single["thisUpdate"] = gtime(answer.this_update)
        single["nextUpdate"] = single["nextUpdate"].clone(gtime(answer.next_update).asOctets())
        responses[i] = single
    if nonce_der is not None:
        ext, _ = decoder.decode(nonce_der, asn1Spec=rfc5280.Extension())
        data["responseExtensions"][0] = ext
    basic = rfc6960.BasicOCSPResponse()
    basic["tbsResponseData"] = data
    basic["signatureAlgorithm"], _ = decoder.decode(
        ECDSA_SHA256, asn1Spec=rfc5280.AlgorithmIdentifier()
    )
    basic["signature"] = univ.BitString.fromOctetString(signature)
    for i, cert_der in enumerate(certificates):
        basic["certs"][i], _ = decoder.decode(cert_der, asn1Spec=rfc5280.Certificate())
    response = rfc6960.OCSPResponse()
    response["responseStatus"] = "successful"
    response["responseBytes"]["responseType"] = rfc6960.id_pkix_ocsp_basic
    response["responseBytes"]["response"] = univ.OctetString(encoder.encode(basic))
    return bytes(encoder.encode(data)), bytes(encoder.encode(response))


def _certificate(serial: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wire {serial}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _ref(cert: x509.Certificate, issuer: x509.Certificate) -> CertRef:
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    parsed = ocsp_wire.parse_request(request.build().public_bytes(serialization.Encoding.DER))
    return parsed.refs[0]


def _nonce_der() -> bytes:
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(*[_certificate(1)[0]] * 2, hashes.SHA1())  # noqa: S303
        .add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    )
    nonce = ocsp_wire.parse_request(request.build().public_bytes(serialization.Encoding.DER))
    assert nonce.nonce_extension_der is not None
    return nonce.nonce_extension_der


ISSUER, ISSUER_KEY = _certificate(0x1000)
CERTS = [_certificate(s)[0] for s in (1, 0x7F, 0x80, 2**158 + 12345)]
RESPONDER = ISSUER.public_bytes(serialization.Encoding.DER)
CASES = {
    "good": [SingleAnswer(_ref(CERTS[0], ISSUER), "good", NOW, LATER)],
    "unknown": [SingleAnswer(_ref(CERTS[1], ISSUER), "unknown", NOW, LATER)],
    "revoked-no-reason": [
        SingleAnswer(_ref(CERTS[2], ISSUER), "revoked", NOW, LATER, NOW - dt.timedelta(hours=1))
    ],
    "revoked-unspecified": [
        SingleAnswer(
            _ref(CERTS[2], ISSUER), "revoked", NOW, LATER, NOW, RevocationReason.UNSPECIFIED
        )
    ],
    "revoked-key-compromise": [
        SingleAnswer(
            _ref(CERTS[3], ISSUER), "revoked", NOW, LATER, NOW, RevocationReason.KEY_COMPROMISE
        )
    ],
    "several": [
        SingleAnswer(
            _ref(c, ISSUER),
            status,
            NOW,
            LATER,
            NOW if status == "revoked" else None,
            RevocationReason.SUPERSEDED if status == "revoked" else None,
        )
        for c, status in zip(CERTS, ("good", "revoked", "unknown", "good"), strict=True)
    ],
    "sixty-four": [SingleAnswer(_ref(CERTS[0], ISSUER), "good", NOW, LATER)] * 64,
}


@pytest.mark.parametrize("nonce", [False, True], ids=["no-nonce", "nonce"])
@pytest.mark.parametrize("delegated", [False, True], ids=["ca", "delegated"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bytes_are_pyasn1s(case: str, delegated: bool, nonce: bool) -> None:
    answers = CASES[case]
    key_hash = hashlib.sha1(ocsp_wire.spki_bits(ISSUER)).digest()  # noqa: S324
    nonce_der = _nonce_der() if nonce else None
    certificates = [RESPONDER] if delegated else []
    tbs = ocsp_wire.response_data(answers, NOW, key_hash, nonce_der)
    signature = ISSUER_KEY.sign(tbs, ec.ECDSA(hashes.SHA256()))
    whole = ocsp_wire.signed_response(tbs, ECDSA_SHA256, signature, certificates)
    expected_tbs, expected = _reference(answers, NOW, key_hash, nonce_der, signature, certificates)
    assert tbs == expected_tbs
    assert whole == expected


def test_what_it_writes_parses_and_verifies_in_cryptography() -> None:
    answer = CASES["revoked-key-compromise"][0]
    key_hash = hashlib.sha1(ocsp_wire.spki_bits(ISSUER)).digest()  # noqa: S324
    tbs = ocsp_wire.response_data([answer], NOW, key_hash, _nonce_der())
    signature = ISSUER_KEY.sign(tbs, ec.ECDSA(hashes.SHA256()))
    parsed = ocsp.load_der_ocsp_response(
        ocsp_wire.signed_response(tbs, ECDSA_SHA256, signature, [RESPONDER])
    )
    assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert parsed.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert parsed.revocation_reason is x509.ReasonFlags.key_compromise
    assert parsed.serial_number == CERTS[3].serial_number
    assert parsed.responder_key_hash == key_hash
    assert parsed.produced_at_utc == NOW.replace(microsecond=0)
    assert parsed.next_update_utc == LATER.replace(microsecond=0)
    assert parsed.certificates == [ISSUER]
    assert parsed.tbs_response_bytes == tbs
    ISSUER_KEY.public_key().verify(parsed.signature, tbs, ec.ECDSA(hashes.SHA256()))
    assert isinstance(parsed.extensions.get_extension_for_class(x509.OCSPNonce).value,
                      x509.OCSPNonce)  # fmt: skip
