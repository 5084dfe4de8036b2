"""Signing OCSP answers with a CA's or a delegated responder's Signer; no decisions are made here.

The core decides what each answer says (good, revoked, unknown) and which key answers; this
module turns that into the signed DER through crypto/ocsp_wire.py, so the key stays behind the
Signer and no signing callback is handed to the wire encoder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from ca_service.crypto import ocsp_wire
from ca_service.signing import algorithms
from ca_service.signing.signer import Signer


@dataclass(frozen=True)
class OCSPSigner:
    """A Signer of OCSP answers with what every answer says of it, worked out once per key."""

    signer: Signer
    key_hash: bytes  # ResponderID byKey: SHA-1 of the signer's subjectPublicKey
    algorithm_der: bytes
    certificates: tuple[bytes, ...]  # the delegated responder's certificate, or nothing

    @classmethod
    def of(cls, signer: Signer, *, delegated: bool) -> OCSPSigner:
        """``delegated``: a responder certificate, which each answer must carry (RFC 6960
        4.2.2.2); a CA answering for itself is known to the client already."""
        cert = signer.certificate
        return cls(
            signer,
            hashlib.sha1(ocsp_wire.spki_bits(cert)).digest(),  # noqa: S324 (RFC 6960 KeyHash)
            algorithms.algorithm_identifier(signer.key_type),
            (cert.public_bytes(serialization.Encoding.DER),) if delegated else (),
        )


def sign_response(
    signer: OCSPSigner,
    answers: Sequence[ocsp_wire.SingleAnswer],
    produced_at: dt.datetime,
    nonce_extension_der: bytes | None,
) -> bytes:
    """The signed, successful OCSPResponse DER for ``answers``."""
    tbs = ocsp_wire.response_data(answers, produced_at, signer.key_hash, nonce_extension_der)
    signature = signer.signer.sign_ocsp_tbs(tbs)
    return ocsp_wire.signed_response(tbs, signer.algorithm_der, signature, signer.certificates)
