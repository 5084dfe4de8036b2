"""Building and signing certificates from approved templates. It applies no policy: every field
is given. Only the signers of this package call it, with the key they hold."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID

from ca_service.crypto import der
from ca_service.crypto.keys import SigningKey, generate_private_key, signature_hash
from ca_service.domain import ApprovedTemplate, KeyType
from ca_service.policy.names import NameConstraintsSpec
from ca_service.signing import algorithms


@dataclass(frozen=True)
class IntermediateTemplate:
    """An issuing CA's certificate, every field decided by the core before it is signed."""

    public_key: CertificatePublicKeyTypes
    subject: x509.Name
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    constraints: NameConstraintsSpec
    crl_url: str
    ca_issuers_url: str
    ocsp_url: str


def sign_leaf(
    template: ApprovedTemplate,
    key: SigningKey,
    key_type: KeyType,
    issuer: x509.Certificate,
    issuer_ski: x509.SubjectKeyIdentifier,
) -> x509.Certificate:
    """Build and sign an end-entity certificate exactly as the template says."""
    return build_leaf(template, issuer, issuer_ski).sign(key, signature_hash(key_type))


def build_leaf(
    template: ApprovedTemplate, issuer: x509.Certificate, issuer_ski: x509.SubjectKeyIdentifier
) -> x509.CertificateBuilder:
    """The end-entity certificate the template says, to be signed by the issuer's key."""
    sans = [n.general_name() for n in template.names]
    builder = x509.CertificateBuilder(
        issuer_name=issuer.subject,
        subject_name=template.subject,
        public_key=template.public_key,
        serial_number=template.serial,
        not_valid_before=template.not_before,
        not_valid_after=template.not_after,
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(_key_usage(template.key_usages), True)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage(list(template.extended_key_usages)), False
    )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(template.public_key), False
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), False
    )
    if sans:
        # RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=len(template.subject) == 0
        )
    builder = builder.add_extension(_crl_distribution_points(template.crl_url), False)
    builder = builder.add_extension(_aia(template.ca_issuers_url, template.ocsp_url), False)
    if template.freshest_crl_url:
        # RFC 5280 4.2.1.15: non-critical, the same syntax as the CRL Distribution Points.
        points = _crl_distribution_points(template.freshest_crl_url)
        builder = builder.add_extension(x509.FreshestCRL(list(points)), False)
    if template.ocsp_nocheck:
        builder = builder.add_extension(x509.OCSPNoCheck(), False)
    return builder


_KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _key_usage(names: tuple[str, ...]) -> x509.KeyUsage:
    unknown = set(names) - set(_KEY_USAGE_BITS)
    if unknown:
        raise ValueError(f"unknown key usage bits {sorted(unknown)}")
    return x509.KeyUsage(**{bit: bit in names for bit in _KEY_USAGE_BITS})


def _ca_key_usage() -> x509.KeyUsage:
    # digitalSignature too, so that a CA configured to sign its own OCSP answers may.
    return _key_usage(("digital_signature", "key_cert_sign", "crl_sign"))


def _crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _aia(ca_issuers_url: str, ocsp_url: str | None) -> x509.AuthorityInformationAccess:
    descriptions = []
    if ocsp_url:
        descriptions.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
            )
        )
    descriptions.append(
        x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(ca_issuers_url),
        )
    )
    return x509.AuthorityInformationAccess(descriptions)


def sign_root(
    key: SigningKey,
    key_type: KeyType,
    subject: x509.Name,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """A self-signed root with pathLen 1: it may certify intermediates, which certify leaves."""
    builder = build_root(key.public_key(), subject, serial, not_before, not_after)
    return builder.sign(key, signature_hash(key_type))


def build_root(
    public_key: CertificatePublicKeyTypes,
    subject: x509.Name,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """The root certificate of ``public_key``, to be signed by its own private half."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        x509.CertificateBuilder(
            issuer_name=subject,
            subject_name=subject,
            public_key=public_key,
            serial_number=serial,
            not_valid_before=not_before,
            not_valid_after=not_after,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), True)
        .add_extension(_ca_key_usage(), True)
        .add_extension(ski, False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    )


def sign_intermediate(
    template: IntermediateTemplate,
    key: SigningKey,
    key_type: KeyType,
    parent: x509.Certificate,
    parent_ski: x509.SubjectKeyIdentifier,
) -> x509.Certificate:
    """An issuing CA with pathLen 0, optionally name-constrained, signed by ``parent``'s key.

    It says where its own status is published as a leaf does: the parent's CRL, the parent's
    certificate, and the OCSP responder that answers for the parent's children. A validator
    that checks every certificate of a path by OCSP only (Java's PKIX with ocsp.enable and CRL
    distribution points off) rejects the whole path when the intermediate names no responder.
    """
    return build_intermediate(template, parent, parent_ski).sign(key, signature_hash(key_type))


def build_intermediate(
    template: IntermediateTemplate,
    parent: x509.Certificate,
    parent_ski: x509.SubjectKeyIdentifier,
) -> x509.CertificateBuilder:
    """The issuing CA's certificate (see ``sign_intermediate``), to be signed by the parent."""
    t = template
    builder = (
        x509.CertificateBuilder(
            issuer_name=parent.subject,
            subject_name=t.subject,
            public_key=t.public_key,
            serial_number=t.serial,
            not_valid_before=t.not_before,
            not_valid_after=t.not_after,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(_ca_key_usage(), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(t.public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(parent_ski), False
        )
        .add_extension(_crl_distribution_points(t.crl_url), False)
        .add_extension(_aia(t.ca_issuers_url, t.ocsp_url), False)
    )
    if not t.constraints.empty:
        builder = builder.add_extension(_name_constraints(t.constraints), True)
    return builder


# One throwaway key per algorithm family, made once per process: the stand-in signer whose
# only use is to have `cryptography` encode a TBSCertificate (see sign_externally).
_PLACEHOLDERS: dict[str, SigningKey] = {}
_PLACEHOLDER_LOCK = threading.Lock()


def _placeholder(key_type: KeyType) -> SigningKey:
    family = "rsa" if key_type.value.startswith("rsa") else "ec"
    with _PLACEHOLDER_LOCK:
        key = _PLACEHOLDERS.get(family)
        if key is None:
            key = _PLACEHOLDERS[family] = generate_private_key(
                KeyType.RSA_2048 if family == "rsa" else KeyType.ECDSA_P256
            )
        return key


def sign_externally(
    builder: x509.CertificateBuilder, key_type: KeyType, sign_tbs: Callable[[bytes], bytes]
) -> tuple[x509.Certificate, bytes, bytes]:
    """A certificate signed by a key `cryptography` cannot hold (one inside a PKCS#11 token).

    `cryptography` signs certificates only with its own key objects, so the builder signs with
    a throwaway key of the same algorithm family: its TBSCertificate then names the signature
    algorithm ``key_type`` uses (ecdsa-with-SHA256/384 depends on the hash alone, and
    sha256WithRSAEncryption on no key size), and those exact bytes are signed by ``sign_tbs``
    and re-assembled as Certificate ::= SEQUENCE { tbs, algorithm, BIT STRING signature }.
    Returns the certificate, its TBS bytes and the signature, for the caller to verify.
    """
    draft = builder.sign(_placeholder(key_type), signature_hash(key_type))
    algorithm = algorithms.algorithm_identifier(key_type)
    tbs = draft.tbs_certificate_bytes
    if algorithm not in tbs:
        raise RuntimeError("the TBSCertificate names another signature algorithm")
    signature = sign_tbs(tbs)
    cert = x509.load_der_x509_certificate(der.sequence(tbs, algorithm, der.bit_string(signature)))
    if cert.tbs_certificate_bytes != tbs or cert.signature_algorithm_oid != (
        draft.signature_algorithm_oid
    ):
        raise RuntimeError("the certificate just assembled does not parse back")
    return cert, tbs, signature


def _name_constraints(spec: NameConstraintsSpec) -> x509.NameConstraints:
    def subtrees(
        dns: tuple[str, ...], ips: tuple[str, ...], mails: tuple[str, ...]
    ) -> list[x509.GeneralName]:
        out: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        out += [x509.IPAddress(ipaddress.ip_network(n)) for n in ips]
        out += [x509.RFC822Name(m) for m in mails]
        return out

    permitted = subtrees(spec.permitted_dns, spec.permitted_ip, spec.permitted_email)
    excluded = subtrees(spec.excluded_dns, spec.excluded_ip, ())
    return x509.NameConstraints(
        permitted_subtrees=permitted or None, excluded_subtrees=excluded or None
    )
