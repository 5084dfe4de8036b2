"""OCSP on the wire (RFC 6960): parsing requests and encoding signed responses.

`cryptography` parses and builds only one certificate per OCSP request and response; RFC 6960
allows several, and clients (OpenSSL among them) send several. So the ASN.1 structures here come
from pyasn1-alt-modules' RFC 6960 module, kept by the authors of pkilint. Nothing here signs: a
response is encoded in two steps, the ResponseData to be signed and then the BasicOCSPResponse
around the signature that signing/ocsp.py had the responder's Signer make over it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_alt_modules import rfc5280, rfc6960

from ca_service.crypto import der
from ca_service.domain import RevocationReason

SHA1 = univ.ObjectIdentifier("1.3.14.3.2.26")
SHA256 = univ.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
SUPPORTED_HASHES = {str(SHA1): "sha1", str(SHA256): "sha256"}
MAX_REQUESTS = 64
NONCE_MIN, NONCE_MAX = 1, 32  # RFC 8954 section 2.1


class MalformedRequest(Exception):
    """The request cannot be parsed or breaks RFC 6960 / RFC 8954; answer malformedRequest."""


@dataclass(frozen=True)
class CertRef:
    """One CertID of a request, kept as received so that the answer echoes it exactly."""

    hash_name: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    der: bytes  # the CertID's own DER, echoed in the SingleResponse


@dataclass(frozen=True)
class ParsedRequest:
    refs: tuple[CertRef, ...]
    nonce_extension_der: bytes | None  # the whole Extension, echoed as received


@dataclass(frozen=True)
class SingleAnswer:
    ref: CertRef
    status: str  # "good", "revoked" or "unknown"
    this_update: dt.datetime
    next_update: dt.datetime
    revoked_at: dt.datetime | None = None
    reason: RevocationReason | None = None


def parse_request(data: bytes) -> ParsedRequest:
    try:
        request, rest = decoder.decode(data, asn1Spec=rfc6960.OCSPRequest())
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise MalformedRequest(f"not a DER OCSPRequest: {type(exc).__name__}") from None
    if rest:
        raise MalformedRequest("trailing bytes after the OCSPRequest")
    tbs = request["tbsRequest"]
    if int(tbs["version"]) != 0:
        raise MalformedRequest("unsupported OCSPRequest version")
    items = tbs["requestList"]
    if len(items) == 0:
        raise MalformedRequest("the request lists no certificate")
    if len(items) > MAX_REQUESTS:
        raise MalformedRequest(f"more than {MAX_REQUESTS} certificates in one request")
    refs = []
    for item in items:
        cert_id = item["reqCert"]
        oid = str(cert_id["hashAlgorithm"]["algorithm"])
        hash_name = SUPPORTED_HASHES.get(oid, "unsupported:" + oid)
        refs.append(
            CertRef(
                hash_name=hash_name,
                issuer_name_hash=bytes(cert_id["issuerNameHash"]),
                issuer_key_hash=bytes(cert_id["issuerKeyHash"]),
                serial=int(cert_id["serialNumber"]),
                der=encoder.encode(cert_id),
            )
        )
    nonce_der = None
    extensions = tbs["requestExtensions"]
    if extensions.isValue:
        for ext in extensions:
            if ext["extnID"] == rfc6960.id_pkix_ocsp_nonce:
                _check_nonce(bytes(ext["extnValue"]))
                nonce_der = encoder.encode(ext)
    return ParsedRequest(tuple(refs), nonce_der)


def cert_ref(cert_id_der: bytes) -> CertRef:
    """A CertID kept as received (a pre-signed answer's), read back."""
    cert_id, _ = decoder.decode(cert_id_der, asn1Spec=rfc6960.CertID())
    oid = str(cert_id["hashAlgorithm"]["algorithm"])
    return CertRef(
        SUPPORTED_HASHES.get(oid, "unsupported:" + oid),
        bytes(cert_id["issuerNameHash"]),
        bytes(cert_id["issuerKeyHash"]),
        int(cert_id["serialNumber"]),
        cert_id_der,
    )


def _check_nonce(extn_value: bytes) -> None:
    try:
        nonce, rest = decoder.decode(extn_value, asn1Spec=univ.OctetString())
    except PyAsn1Error:
        raise MalformedRequest("the nonce is not an OCTET STRING") from None
    if rest or not NONCE_MIN <= len(bytes(nonce)) <= NONCE_MAX:
        raise MalformedRequest(f"the nonce must be {NONCE_MIN} to {NONCE_MAX} octets (RFC 8954)")


# The response side is written with crypto/der.py, not pyasn1: for an answer signed per request
# (a nonce, several certificates) pyasn1 cost 4.5 of its 5 ms of CPU, most of it decoding and
# re-encoding the delegated responder's certificate (bench/PROFILES.md, "OCSP answers signed per
# request"). Every part a client sent or the signer made (CertID, nonce extension, signature
# algorithm, certificates) is spliced in as the DER it already is. tests/crypto/test_ocsp_wire.py
# checks the bytes against pyasn1's encoding of the same structures.
_SUCCESSFUL = b"\x0a\x01\x00"  # OCSPResponseStatus successful (ENUMERATED 0)
_ID_PKIX_OCSP_BASIC = b"\x06\x09\x2b\x06\x01\x05\x05\x07\x30\x01\x01"  # 1.3.6.1.5.5.7.48.1.1
_GOOD, _UNKNOWN = b"\x80\x00", b"\x82\x00"  # [0] and [2] IMPLICIT NULL


def _time(value: dt.datetime) -> bytes:
    """GeneralizedTime, as RFC 6960 has every OCSP time."""
    return der.tlv(0x18, value.astimezone(dt.UTC).strftime("%Y%m%d%H%M%SZ").encode())


def _single_response(answer: SingleAnswer) -> bytes:
    if answer.status == "good":
        status = _GOOD
    elif answer.status == "revoked":
        assert answer.revoked_at is not None
        info = _time(answer.revoked_at)
        if answer.reason is not None and answer.reason is not RevocationReason.UNSPECIFIED:
            info += der.explicit(0, der.tlv(0x0A, bytes((answer.reason.code,))))
        status = der.tlv(0xA1, info)  # [1] IMPLICIT RevokedInfo
    else:
        status = _UNKNOWN
    return der.sequence(
        answer.ref.der,
        status,
        _time(answer.this_update),
        der.explicit(0, _time(answer.next_update)),
    )


def response_data(
    answers: Sequence[SingleAnswer],
    produced_at: dt.datetime,
    responder_key_hash: bytes,
    nonce_extension_der: bytes | None,
) -> bytes:
    """The DER of an answer's ResponseData, the bytes its signature covers.

    ``responder_key_hash``: SHA-1 of the signer's subjectPublicKey BIT STRING (the ResponderID
    byKey of RFC 6960)."""
    parts = [
        der.tlv(0xA2, der.tlv(0x04, responder_key_hash)),  # ResponderID byKey [2] EXPLICIT
        _time(produced_at),
        der.sequence(*(_single_response(a) for a in answers)),
    ]
    if nonce_extension_der is not None:
        parts.append(der.explicit(1, der.sequence(nonce_extension_der)))
    return der.sequence(*parts)


def signed_response(
    tbs: bytes,
    algorithm_der: bytes,
    signature: bytes,
    certificates: Sequence[bytes],
) -> bytes:
    """The successful OCSPResponse around the ResponseData ``tbs`` and its signature.

    ``algorithm_der``: the DER AlgorithmIdentifier of the signature; ``certificates``: DER
    certificates to include (a delegated responder's own)."""
    basic = [tbs, algorithm_der, der.bit_string(signature)]
    if certificates:
        basic.append(der.explicit(0, der.sequence(*certificates)))
    response_bytes = der.sequence(_ID_PKIX_OCSP_BASIC, der.tlv(0x04, der.sequence(*basic)))
    return der.sequence(_SUCCESSFUL, der.explicit(0, response_bytes))


def unsuccessful(status: str) -> bytes:
    """malformedRequest, internalError, tryLater, sigRequired or unauthorized: no body, unsigned."""
    response = rfc6960.OCSPResponse()
    response["responseStatus"] = status
    return bytes(encoder.encode(response))


def spki_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents, the input of OCSP key hashes."""
    spki_der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki, _ = decoder.decode(spki_der, asn1Spec=rfc5280.SubjectPublicKeyInfo())
    return bytes(spki["subjectPublicKey"].asOctets())
