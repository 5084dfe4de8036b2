"""A loaded CA: its certificate, its signing key and the chain above it."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from ca_service.crypto.keys import SigningKey
from ca_service.domain import KeyType


@dataclass(frozen=True)
class CAMaterial:
    name: str
    certificate: x509.Certificate
    key: SigningKey = field(repr=False)
    key_type: KeyType
    # Issuer certificates above this CA, nearest first, up to and including the root.
    parents: tuple[x509.Certificate, ...] = ()

    @property
    def ski(self) -> x509.SubjectKeyIdentifier:
        return self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
