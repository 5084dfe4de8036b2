"""PKCS#10 parsing with proof of possession: the edge where untrusted bytes become typed data."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtensionOID, NameOID

from ca_service.crypto.keys import key_type_of
from ca_service.crypto.names import make_name
from ca_service.domain import KeyType, NameKind, SubjectName
from ca_service.errors import BadRequest

MAX_CSR_BYTES = 64 * 1024


@dataclass(frozen=True)
class ParsedCSR:
    public_key: CertificatePublicKeyTypes
    key_type: KeyType
    common_name: str | None
    names: tuple[SubjectName, ...]


def load_csr(data: bytes | str) -> x509.CertificateSigningRequest:
    """Decode PEM or DER; any failure is one BadRequest, never a library traceback."""
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:  # an unpaired surrogate: no PEM or DER has one
        raise BadRequest("the CSR is not a valid PKCS#10 request in PEM or DER") from None
    if not raw or not raw.strip():
        raise BadRequest("the CSR is empty")
    if len(raw) > MAX_CSR_BYTES:
        raise BadRequest(f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(raw.strip())
        return x509.load_der_x509_csr(raw)
    except (ValueError, x509.InvalidVersion):
        # InvalidVersion (a version other than v1, i.e. 0) is not a ValueError in cryptography.
        raise BadRequest("the CSR is not a valid PKCS#10 request in PEM or DER") from None


def parse_csr(data: bytes | str) -> ParsedCSR:
    csr = load_csr(data)
    try:
        signature_ok = csr.is_signature_valid
    except Exception:  # an unsupported or broken signature algorithm
        signature_ok = False
    if not signature_ok:
        raise BadRequest("the CSR signature does not verify (proof of possession failed)")
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError):
        raise BadRequest("the CSR public key cannot be read or uses an unsupported curve") from None
    key_type = key_type_of(public_key)
    return ParsedCSR(public_key, key_type, _common_name(csr), _san_names(csr))


def _common_name(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        attrs = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        raise BadRequest("the CSR subject is malformed") from None
    if len(attrs) > 1:
        raise BadRequest("the CSR subject has more than one common name")
    if not attrs:
        return None
    value = attrs[0].value
    if not isinstance(value, str):
        raise BadRequest("the CSR common name is not a string")
    return value


def _san_names(csr: x509.CertificateSigningRequest) -> tuple[SubjectName, ...]:
    try:
        ext = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return ()
    except (ValueError, x509.DuplicateExtension):
        raise BadRequest("the CSR extensions are malformed") from None
    san = ext.value
    assert isinstance(san, x509.SubjectAlternativeName)
    names: list[SubjectName] = []
    for gn in san:
        if isinstance(gn, x509.DNSName):
            names.append(make_name(NameKind.DNS, gn.value))
        elif isinstance(gn, x509.IPAddress):
            if not isinstance(gn.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise BadRequest("IP ranges are not allowed as subject alternative names")
            names.append(make_name(NameKind.IP, str(gn.value)))
        elif isinstance(gn, x509.RFC822Name):
            names.append(make_name(NameKind.EMAIL, gn.value))
        elif isinstance(gn, x509.UniformResourceIdentifier):
            names.append(make_name(NameKind.URI, gn.value))
        else:
            raise BadRequest(f"unsupported subject alternative name type {type(gn).__name__}")
    return tuple(names)
