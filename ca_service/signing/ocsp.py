"""Signing OCSP answers with a CA or delegated responder key; no decisions are made here."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ca_service.crypto.keys import SigningKey
from ca_service.crypto.ocsp_wire import SignerInfo, signature_algorithm_der, spki_bits
from ca_service.domain import KeyType

_ALGORITHMS = {
    KeyType.ECDSA_P256: ("1.2.840.10045.4.3.2", False),  # ecdsa-with-SHA256
    KeyType.ECDSA_P384: ("1.2.840.10045.4.3.3", False),  # ecdsa-with-SHA384
    KeyType.RSA_2048: ("1.2.840.113549.1.1.11", True),  # sha256WithRSAEncryption
    KeyType.RSA_3072: ("1.2.840.113549.1.1.11", True),
    KeyType.RSA_4096: ("1.2.840.113549.1.1.11", True),
    KeyType.ED25519: ("1.3.101.112", False),
}


def signer_info(
    cert: x509.Certificate, key: SigningKey, key_type: KeyType, include_cert: bool
) -> SignerInfo:
    """How to sign and identify answers made with ``key``; ``include_cert`` for delegation."""
    oid, null_params = _ALGORITHMS[key_type]

    def sign(data: bytes) -> bytes:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            algorithm = hashes.SHA384() if key_type is KeyType.ECDSA_P384 else hashes.SHA256()
            return key.sign(data, ec.ECDSA(algorithm))
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        raise TypeError("unsupported responder key")

    return SignerInfo(
        key_sha1=hashlib.sha1(spki_bits(cert)).digest(),  # noqa: S324 (RFC 6960 KeyHash is SHA-1)
        algorithm_der=signature_algorithm_der(oid, null_params),
        certificates=(cert.public_bytes(serialization.Encoding.DER),) if include_cert else (),
        sign=sign,
    )
