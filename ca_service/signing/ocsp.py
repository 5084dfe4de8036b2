"""Signing OCSP answers with a CA or delegated responder key; no decisions are made here."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.crypto.keys import SigningKey
from ca_service.crypto.ocsp_wire import SignerInfo, spki_bits
from ca_service.domain import KeyType
from ca_service.signing import algorithms


def signer_info(
    cert: x509.Certificate, key: SigningKey, key_type: KeyType, include_cert: bool
) -> SignerInfo:
    """How to sign and identify answers made with ``key``; ``include_cert`` for delegation."""
    return SignerInfo(
        key_sha1=hashlib.sha1(spki_bits(cert)).digest(),  # noqa: S324 (RFC 6960 KeyHash is SHA-1)
        algorithm_der=algorithms.algorithm_identifier(key_type),
        certificates=(cert.public_bytes(serialization.Encoding.DER),) if include_cert else (),
        sign=lambda data: algorithms.sign(key, key_type, data),
    )
