"""Key generation, classification and serialization over `cryptography`."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from ca_service.domain import KeyType
from ca_service.errors import BadRequest, ConfigError

_RSA_SIZES = {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072, 4096: KeyType.RSA_4096}
_CURVES = {"secp256r1": KeyType.ECDSA_P256, "secp384r1": KeyType.ECDSA_P384}

SigningKey = CertificateIssuerPrivateKeyTypes


def generate_private_key(key_type: KeyType) -> SigningKey:
    if key_type is KeyType.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    bits = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072, KeyType.RSA_4096: 4096}[key_type]
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_type_of(public_key: object) -> KeyType:
    """Classify a public key, refusing anything outside the supported set with a clear reason."""
    if isinstance(public_key, rsa.RSAPublicKey):
        size = public_key.key_size
        if size < 2048:
            raise BadRequest(
                f"RSA key of {size} bits is too small; at least 2048 bits are required"
            )
        if size not in _RSA_SIZES:
            raise BadRequest(f"RSA key of {size} bits is not supported; use 2048, 3072 or 4096")
        if public_key.public_numbers().e != 65537:
            raise BadRequest("RSA public exponent must be 65537")
        return _RSA_SIZES[size]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        if curve not in _CURVES:
            raise BadRequest(f"elliptic curve {curve} is not supported; use P-256 or P-384")
        return _CURVES[curve]
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeyType.ED25519
    if isinstance(public_key, ed448.Ed448PublicKey):
        raise BadRequest("Ed448 keys are not supported; use Ed25519, ECDSA or RSA")
    raise BadRequest("unsupported public key algorithm; use ECDSA P-256/P-384, RSA or Ed25519")


def signature_hash(key_type: KeyType) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash a CA of this key type signs with: SHA-384 for P-384, none for Ed25519."""
    if key_type is KeyType.ED25519:
        return None
    if key_type is KeyType.ECDSA_P384:
        return hashes.SHA384()
    return hashes.SHA256()


def as_signing_key(key: PrivateKeyTypes) -> SigningKey:
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ConfigError("CA key type is not supported for signing")
    return key


def encrypt_private_key(key: PrivateKeyTypes, passphrase: bytes) -> bytes:
    """PKCS#8 PEM encrypted with the best scheme `cryptography` offers (PBES2, AES-256)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def load_encrypted_private_key(data: bytes, passphrase: bytes, what: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise ConfigError(f"{what}: the key file is not encrypted; refusing to use it") from None
    except ValueError:
        # Deliberately vague: the message must not help tell a wrong passphrase from a bad file.
        raise ConfigError(f"{what}: cannot decrypt the CA key (wrong passphrase?)") from None
    return as_signing_key(key)


def load_any_private_key(data: bytes, passphrase: bytes | None, what: str) -> SigningKey:
    """Load a key to import: PEM or DER, encrypted or not."""
    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    for loader in loaders:
        for password in (passphrase, None) if passphrase else (None,):
            try:
                return as_signing_key(loader(data, password=password))
            except (TypeError, ValueError):
                continue
    raise ConfigError(f"{what}: not a readable private key (or the passphrase does not open it)")


def private_key_pem(key: PrivateKeyTypes) -> str:
    """Unencrypted PKCS#8 PEM, for a leaf key handed once to the caller who asked for it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_key_matches(private_key: SigningKey, public_key: CertificatePublicKeyTypes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return private_key.public_key().public_bytes(enc, fmt) == public_key.public_bytes(enc, fmt)


def fingerprint_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
