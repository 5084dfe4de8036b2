"""Signature algorithms of CA keys: the AlgorithmIdentifier to write and how to sign."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ca_service.crypto import der
from ca_service.crypto.keys import SigningKey
from ca_service.domain import KeyType

# (DER of the OID, whether parameters are an explicit NULL: RFC 4055 for RSA; absent for ECDSA
# per RFC 5758 and for Ed25519 per RFC 8410).
_OIDS = {
    KeyType.ECDSA_P256: ("2a8648ce3d040302", False),  # ecdsa-with-SHA256
    KeyType.ECDSA_P384: ("2a8648ce3d040303", False),  # ecdsa-with-SHA384
    KeyType.RSA_2048: ("2a864886f70d01010b", True),  # sha256WithRSAEncryption
    KeyType.RSA_3072: ("2a864886f70d01010b", True),
    KeyType.RSA_4096: ("2a864886f70d01010b", True),
    KeyType.ED25519: ("2b6570", False),  # id-Ed25519
}


def algorithm_identifier(key_type: KeyType) -> bytes:
    oid_hex, null_params = _OIDS[key_type]
    oid = der.tlv(0x06, bytes.fromhex(oid_hex))
    return der.sequence(oid, b"\x05\x00") if null_params else der.sequence(oid)


def sign(key: SigningKey, key_type: KeyType, data: bytes) -> bytes:
    """Sign ``data`` as ``algorithm_identifier(key_type)`` says."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA384() if key_type is KeyType.ECDSA_P384 else hashes.SHA256()
        return key.sign(data, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    raise TypeError("unsupported signing key")


def verify(certificate: x509.Certificate, key_type: KeyType, signature: bytes, data: bytes) -> None:
    """Check a signature made by ``sign`` with the certificate's public key; raises if invalid."""
    public_key = certificate.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = hashes.SHA384() if key_type is KeyType.ECDSA_P384 else hashes.SHA256()
        public_key.verify(signature, data, ec.ECDSA(digest))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        public_key.verify(signature, data)
    else:
        raise TypeError("unsupported public key")
