"""Reading fields out of certificates for storage and display."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from ca_service.domain import NameKind, SubjectName


def common_name_of(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The SANs as 'kind:value' strings, the form stored and searched."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for gn in san:
        if isinstance(gn, x509.DNSName):
            out.append(str(SubjectName(NameKind.DNS, gn.value)))
        elif isinstance(gn, x509.IPAddress):
            out.append(str(SubjectName(NameKind.IP, str(gn.value))))
        elif isinstance(gn, x509.RFC822Name):
            out.append(str(SubjectName(NameKind.EMAIL, gn.value)))
        elif isinstance(gn, x509.UniformResourceIdentifier):
            out.append(str(SubjectName(NameKind.URI, gn.value)))
    return tuple(out)
