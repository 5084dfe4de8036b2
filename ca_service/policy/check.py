"""The policy step: a pure function from a request to an approved template, or a refusal.

It touches no key and no database. Time and the serial are passed in, so the same inputs always
give the same answer, which is what makes it testable by property.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca_service.crypto.names import make_name, normalize_uri, refuse_unprintable
from ca_service.domain import (
    ApprovedTemplate,
    CallerPolicy,
    IssuanceRequest,
    KeyType,
    NameKind,
    SubjectName,
)
from ca_service.errors import BadRequest, CAError, PolicyRejected
from ca_service.policy.names import (
    NameConstraintsSpec,
    first_unmatched,
    is_public_suffix,
    subject_value_allowed,
)
from ca_service.policy.profiles import Profile

# RFC 5280 ub-common-name; longer values are rejected by strict parsers.
MAX_COMMON_NAME = 64
MAX_NAMES = 100
# Clients whose clocks run a little behind must not see a certificate "not yet valid".
BACKDATE = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class AuthorityView:
    """What policy needs to know of the issuing authority (no key material)."""

    name: str
    not_after: dt.datetime
    constraints: NameConstraintsSpec
    crl_url: str
    ca_issuers_url: str
    ocsp_url: str | None


def check(
    request: IssuanceRequest,
    profiles: Mapping[str, Profile],
    authority: AuthorityView,
    caller: CallerPolicy,
    now: dt.datetime,
    serial: int,
) -> ApprovedTemplate:
    """Approve ``request`` as a fully decided template, or raise naming the broken rule."""
    profile = profiles.get(request.profile)
    if profile is None:
        raise PolicyRejected(
            f"unknown profile {request.profile!r}; known: {', '.join(sorted(profiles))}",
            rule="profile.unknown",
        )
    if caller.profiles is not None and profile.name not in caller.profiles:
        raise PolicyRejected(f"profile {profile.name!r} is not allowed", rule="caller.profiles")
    if caller.authorities is not None and authority.name not in caller.authorities:
        raise PolicyRejected(
            f"authority {authority.name!r} is not allowed", rule="caller.authorities"
        )
    if request.key_type not in profile.key_types:
        raise PolicyRejected(
            f"key type {request.key_type} is not allowed by profile {profile.name!r}",
            rule="profile.key_types",
        )

    _refuse_unprintable(request)
    common_name, names = _subject_names(request, profile)
    _check_names(names, profile, authority, caller)
    not_before, not_after = _validity(request, profile, authority, caller, now)

    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    _check_subject(subject, names, caller)
    return ApprovedTemplate(
        authority=authority.name,
        serial=serial,
        subject=subject,
        common_name=common_name,
        names=names,
        public_key=request.public_key,
        key_type=request.key_type,
        profile=profile.name,
        not_before=not_before,
        not_after=not_after,
        extended_key_usages=profile.eku_oids,
        crl_url=authority.crl_url,
        ca_issuers_url=authority.ca_issuers_url,
        ocsp_url=authority.ocsp_url,
        key_usages=leaf_key_usages(request.key_type),
    )


def leaf_key_usages(key_type: KeyType) -> tuple[str, ...]:
    """digitalSignature always; keyEncipherment for RSA, whose keys also do key transport
    (TLS 1.2 RSA key exchange, CMS). EC and EdDSA keys never encipher."""
    if key_type in (KeyType.RSA_2048, KeyType.RSA_3072, KeyType.RSA_4096):
        return ("digital_signature", "key_encipherment")
    return ("digital_signature",)


def responder_template(
    authority: AuthorityView,
    public_key: CertificatePublicKeyTypes,
    key_type: KeyType,
    now: dt.datetime,
    serial: int,
    lifetime: dt.timedelta,
) -> ApprovedTemplate:
    """A delegated OCSP responder certificate: OCSPSigning only, ocsp-nocheck, short-lived.

    Short life stands in for revocation checking, which nocheck turns off for this certificate.
    """
    if authority.not_after <= now:
        raise PolicyRejected(f"authority {authority.name!r} has expired", rule="authority.expired")
    common_name = f"{authority.name} OCSP Responder"
    return ApprovedTemplate(
        authority=authority.name,
        serial=serial,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        common_name=common_name,
        names=(),
        public_key=public_key,
        key_type=key_type,
        profile="ocsp-responder",
        not_before=now - BACKDATE,
        not_after=min(now + lifetime, authority.not_after),
        extended_key_usages=(ExtendedKeyUsageOID.OCSP_SIGNING,),
        crl_url=authority.crl_url,
        ca_issuers_url=authority.ca_issuers_url,
        ocsp_url=None,
        key_usages=("digital_signature",),
        ocsp_nocheck=True,
    )


def _subject_names(
    request: IssuanceRequest, profile: Profile
) -> tuple[str | None, tuple[SubjectName, ...]]:
    names: list[SubjectName] = list(request.names)
    common_name = request.common_name.strip() if request.common_name else None
    if common_name:
        if len(common_name) > MAX_COMMON_NAME:
            raise BadRequest(f"the common name is longer than {MAX_COMMON_NAME} characters")
        cn_name = _name_from_common_name(common_name, profile)
        if cn_name is not None:
            # The CN is kept in the subject for old clients, but only the SAN is authoritative.
            common_name = cn_name.value
            if cn_name not in names:
                names.insert(0, cn_name)
        elif profile.require_dns_or_ip:
            raise PolicyRejected(
                f"the common name {common_name!r} is not a DNS name or IP address",
                rule="subject.common_name",
            )
    unique = tuple(dict.fromkeys(names))
    if len(unique) > MAX_NAMES:
        raise PolicyRejected(f"more than {MAX_NAMES} names", rule="names.max")
    if not unique and not common_name:
        raise PolicyRejected("the request names no subject", rule="subject.empty")
    if profile.require_dns_or_ip and not any(n.kind in (NameKind.DNS, NameKind.IP) for n in unique):
        raise PolicyRejected(
            f"profile {profile.name!r} needs at least one DNS name or IP address",
            rule="profile.require_dns_or_ip",
        )
    return common_name, unique


def _refuse_unprintable(request: IssuanceRequest) -> None:
    """Every text the certificate can take from the request, for every caller: the raw CN
    (before strip(), which would drop U+0085, U+00A0, U+2028 and U+2029 silently) and each SAN.
    The subject is built from these alone, so each of its values is covered too."""
    if request.common_name is not None:
        refuse_unprintable(request.common_name, "the common name")
    for name in request.names:
        refuse_unprintable(name.value, f"the name {str(name)!r}")


def _name_from_common_name(common_name: str, profile: Profile) -> SubjectName | None:
    """A CN that reads as a host name or IP is a name; anything else is a display name.

    Where a profile does not need a host name (``client``), only an IP or a dotted name is
    taken for one: a single word such as ``Bob`` is a person's or a team's name, kept as given.
    """
    for kind in (NameKind.IP, NameKind.DNS):
        try:
            name = make_name(kind, common_name)
        except CAError:
            continue
        if kind is NameKind.DNS and not profile.require_dns_or_ip and "." not in name.value:
            return None
        return name
    return None


def _check_subject(
    subject: x509.Name, names: tuple[SubjectName, ...], caller: CallerPolicy
) -> None:
    """Every attribute value of the subject the certificate will carry, against the caller.

    Runs over the final subject, not the request's fields, so that any attribute a request can
    ever set is checked. A CN that repeats one of the certificate's SANs was checked with them;
    any other value needs an ``allowed_subjects`` pattern once the caller's names are restricted
    (a subject is an identity: mTLS rules and relying parties match on it).
    """
    if not caller.restricts_names:
        return
    sans = {n.value for n in names}
    for attribute in subject:
        value = attribute.value
        assert isinstance(value, str)
        repeats_san = attribute.oid == NameOID.COMMON_NAME and value in sans
        if not repeats_san and not subject_value_allowed(
            attribute.oid, value, caller.allowed_subjects or ()
        ):
            raise PolicyRejected(
                f"subject {attribute.rfc4514_string()!r} is outside the subjects this caller "
                "may request",
                rule="caller.allowed_subjects",
            )


def _check_names(
    names: tuple[SubjectName, ...],
    profile: Profile,
    authority: AuthorityView,
    caller: CallerPolicy,
) -> None:
    wildcards = [n for n in names if n.kind is NameKind.DNS and n.value.startswith("*.")]
    if wildcards and not (profile.allow_wildcards and caller.allow_wildcards):
        who = "profile" if not profile.allow_wildcards else "caller"
        raise PolicyRejected(
            f"wildcard name {wildcards[0].value!r} is not allowed", rule=f"{who}.wildcards"
        )
    for wildcard in wildcards:
        # Even for an admin: no one registrant owns the names below a public suffix.
        if is_public_suffix(wildcard.value[2:]):
            raise PolicyRejected(
                f"wildcard name {wildcard.value!r} covers a public suffix or a top-level domain",
                rule="names.public_suffix_wildcard",
            )
    for name in names:
        if name.kind is NameKind.URI:
            # Patterns compare text: only a normal URI means what its text says.
            normalize_uri(name.value)
        why = authority.constraints.violation(name)
        if why:
            raise PolicyRejected(why, rule="authority.name_constraints")
    if caller.allowed_names is not None:
        outside = first_unmatched(names, caller.allowed_names)
        if outside is not None:
            raise PolicyRejected(
                f"{outside} is outside the names this caller may request",
                rule="caller.allowed_names",
            )


def _validity(
    request: IssuanceRequest,
    profile: Profile,
    authority: AuthorityView,
    caller: CallerPolicy,
    now: dt.datetime,
) -> tuple[dt.datetime, dt.datetime]:
    days = request.validity_days
    if days is None:
        days = profile.default_validity_days
        if caller.max_validity_days is not None:
            days = min(days, caller.max_validity_days)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise BadRequest("validity_days must be a positive whole number")
    if days > profile.max_validity_days:
        raise PolicyRejected(
            f"validity of {days} days exceeds the {profile.max_validity_days} days "
            f"of profile {profile.name!r}",
            rule="profile.max_validity",
        )
    if caller.max_validity_days is not None and days > caller.max_validity_days:
        raise PolicyRejected(
            f"validity of {days} days exceeds this caller's {caller.max_validity_days} days",
            rule="caller.max_validity",
        )
    if authority.not_after <= now:
        raise PolicyRejected(f"authority {authority.name!r} has expired", rule="authority.expired")
    not_after = min(now + dt.timedelta(days=days), authority.not_after)
    return now - BACKDATE, not_after
