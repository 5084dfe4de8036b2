"""The one signing interface: every certificate, CRL and OCSP answer is signed through a Signer.

A Signer is what key loading produces; nothing outside ``signing/`` ever holds the private key
behind it, and it decides nothing: the template, the CRL body and the OCSP answer come to it
complete. ``FileKeySigner`` is a key read from the keystore's files; a PKCS#11 signer (a key
that never leaves its token) implements the same Protocol.
"""

from __future__ import annotations

from typing import Protocol

from cryptography import x509

from ca_service.crypto.keys import SigningKey, public_key_matches
from ca_service.domain import ApprovedTemplate, KeyType
from ca_service.signing import algorithms, issuer


class Signer(Protocol):
    """One CA (or delegated OCSP responder) key and the certificate of its public key."""

    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def key_type(self) -> KeyType: ...

    @property
    def ski(self) -> x509.SubjectKeyIdentifier: ...

    def sign_certificate(self, template: ApprovedTemplate) -> x509.Certificate:
        """An end-entity certificate exactly as policy approved it, issued under this key."""
        ...

    def sign_intermediate(self, template: issuer.IntermediateTemplate) -> x509.Certificate:
        """An issuing CA's certificate under this key (a root certifying its intermediate)."""
        ...

    def sign_crl_tbs(self, tbs: bytes) -> bytes:
        """The signature over a TBSCertList, as ``algorithm_identifier(key_type)`` says."""
        ...

    def sign_ocsp_tbs(self, tbs: bytes) -> bytes:
        """The signature over an OCSP ResponseData."""
        ...


class FileKeySigner:
    """A Signer over a private key loaded from the keystore (made only by FileKeystore)."""

    __slots__ = ("_certificate", "_key", "_key_type", "_ski")

    def __init__(self, certificate: x509.Certificate, key: SigningKey, key_type: KeyType) -> None:
        self._certificate = certificate
        self._key = key
        self._key_type = key_type
        # Read once here rather than on every issuance and CRL.
        self._ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    def __repr__(self) -> str:  # never the key, even in a debugger or a log line
        return f"FileKeySigner({self._certificate.subject.rfc4514_string()!r})"

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self._ski

    def matches_certificate(self) -> bool:
        """Whether the key is the one the certificate certifies (a swapped key file is not)."""
        return public_key_matches(self._key, self._certificate.public_key())

    def sign_certificate(self, template: ApprovedTemplate) -> x509.Certificate:
        return issuer.sign_leaf(template, self._key, self._key_type, self._certificate, self._ski)

    def sign_intermediate(self, template: issuer.IntermediateTemplate) -> x509.Certificate:
        return issuer.sign_intermediate(
            template, self._key, self._key_type, self._certificate, self._ski
        )

    def sign_crl_tbs(self, tbs: bytes) -> bytes:
        return algorithms.sign(self._key, self._key_type, tbs)

    def sign_ocsp_tbs(self, tbs: bytes) -> bytes:
        return algorithms.sign(self._key, self._key_type, tbs)
