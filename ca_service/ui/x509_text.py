"""A certificate's extensions as readable text, from `cryptography`'s parsed extensions: each
extension by name, with its OID, whether it is critical, and its value as lines a person reads
(names, URLs, key usages, identifiers in hex). One it does not know is shown as hex DER, so
every extension the certificate carries is on the page."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

_KEY_USAGES = (
    ("digital_signature", "Digital signature"),
    ("content_commitment", "Content commitment (non-repudiation)"),
    ("key_encipherment", "Key encipherment"),
    ("data_encipherment", "Data encipherment"),
    ("key_agreement", "Key agreement"),
    ("key_cert_sign", "Certificate signing"),
    ("crl_sign", "CRL signing"),
)


@dataclass(frozen=True)
class ExtensionText:
    name: str
    oid: str
    critical: bool
    lines: tuple[str, ...]


def colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def fingerprints(der: bytes) -> tuple[str, str]:
    """SHA-256 and SHA-1 of the DER, as colon-separated hex (SHA-1 only to match old tools)."""
    return (
        colon_hex(hashlib.sha256(der).digest()),
        colon_hex(hashlib.sha1(der, usedforsecurity=False).digest()),
    )


def general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS: {name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP: {name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"Email: {name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI: {name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"Directory name: {name.value.rfc4514_string()}"
    if isinstance(name, x509.RegisteredID):
        return f"Registered ID: {name.value.dotted_string}"
    if isinstance(name, x509.OtherName):
        return f"Other name {name.type_id.dotted_string}: {name.value.hex()}"
    return str(name)


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    name = oid._name
    return oid.dotted_string if name == "Unknown OID" else f"{name} ({oid.dotted_string})"


def _lines(value: x509.ExtensionType) -> list[str]:
    if isinstance(value, x509.BasicConstraints):
        lines = [f"CA: {'yes' if value.ca else 'no'}"]
        if value.path_length is not None:
            lines.append(f"Path length: {value.path_length}")
        return lines
    if isinstance(value, x509.KeyUsage):
        lines = [label for attr, label in _KEY_USAGES if getattr(value, attr)]
        if value.key_agreement:
            if value.encipher_only:
                lines.append("Encipher only")
            if value.decipher_only:
                lines.append("Decipher only")
        return lines
    if isinstance(value, x509.ExtendedKeyUsage):
        return [_oid_name(oid) for oid in value]
    if isinstance(value, x509.SubjectAlternativeName | x509.IssuerAlternativeName):
        return [general_name(n) for n in value]
    if isinstance(value, x509.SubjectKeyIdentifier):
        return [colon_hex(value.digest)]
    if isinstance(value, x509.AuthorityKeyIdentifier):
        lines = []
        if value.key_identifier is not None:
            lines.append(f"Key ID: {colon_hex(value.key_identifier)}")
        for issuer in value.authority_cert_issuer or ():
            lines.append(f"Issuer: {general_name(issuer)}")
        if value.authority_cert_serial_number is not None:
            lines.append(f"Issuer serial: {value.authority_cert_serial_number:x}")
        return lines
    if isinstance(value, x509.CRLDistributionPoints | x509.FreshestCRL):
        lines = []
        for point in value:
            lines += [general_name(n) for n in point.full_name or ()]
            if point.reasons:
                lines.append("Reasons: " + ", ".join(r.value for r in point.reasons))
        return lines
    if isinstance(value, x509.AuthorityInformationAccess | x509.SubjectInformationAccess):
        return [f"{_oid_name(d.access_method)}: {general_name(d.access_location)}" for d in value]
    if isinstance(value, x509.CertificatePolicies):
        return [_oid_name(p.policy_identifier) for p in value]
    if isinstance(value, x509.NameConstraints):
        lines = [f"Permitted: {general_name(n)}" for n in value.permitted_subtrees or ()]
        return lines + [f"Excluded: {general_name(n)}" for n in value.excluded_subtrees or ()]
    if isinstance(value, x509.OCSPNoCheck):
        return ["Present: OCSP answers about this responder are not checked"]
    if isinstance(value, x509.TLSFeature):
        return [f.name for f in value]
    if isinstance(value, x509.PrecertificateSignedCertificateTimestamps):
        return [f"{len(list(value))} signed certificate timestamp(s)"]
    if isinstance(value, x509.InhibitAnyPolicy):
        return [f"Skip certificates: {value.skip_certs}"]
    if isinstance(value, x509.PolicyConstraints):
        return [
            f"Require explicit policy: {value.require_explicit_policy}",
            f"Inhibit policy mapping: {value.inhibit_policy_mapping}",
        ]
    if isinstance(value, x509.UnrecognizedExtension):
        return [f"DER: {value.value.hex()}"]
    return [f"DER: {value.public_bytes().hex()}"]


def extensions(cert: x509.Certificate) -> list[ExtensionText]:
    """Every extension of ``cert``, in the order the certificate carries them."""
    found = []
    for ext in cert.extensions:
        name = ext.oid._name
        if name == "Unknown OID":
            name = "Unknown extension"
        try:
            lines = _lines(ext.value)
        except ValueError:  # a value cryptography parsed but cannot re-encode
            lines = ["(value not shown)"]
        found.append(ExtensionText(name, ext.oid.dotted_string, ext.critical, tuple(lines)))
    return found


def public_key_text(cert: x509.Certificate) -> str:
    """The key's algorithm and size, and the SHA-256 of its SubjectPublicKeyInfo."""
    key = cert.public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    size = getattr(key, "key_size", None)
    curve = getattr(getattr(key, "curve", None), "name", None)
    kind = type(key).__name__.removesuffix("PublicKey").removeprefix("_")
    detail = curve or (f"{size} bits" if size else "")
    return f"{kind} {detail}".strip() + f"; SPKI SHA-256 {hashlib.sha256(spki).hexdigest()}"
