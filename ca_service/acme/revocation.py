"""revokeCert (RFC 8555 section 7.6): who may revoke is decided in policy/authorization.py,
the revocation itself is the core's, with every RFC 5280 reason the core accepts."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.acme.jws import SignedRequest
from ca_service.acme.orders import _b64url
from ca_service.acme.problems import ACMEProblem
from ca_service.acme.service import Accounts, RequestContext
from ca_service.domain import ACMEAccountRecord, Actor, CertStatus, RevocationReason
from ca_service.errors import NotFound
from ca_service.policy.authorization import check_acme_may_revoke
from ca_service.signing.serials import serial_hex
from ca_service.storage.acme import AuthorizationRepository
from ca_service.storage.db import unit_of_work

_BY_CODE = {reason.code: reason for reason in RevocationReason}


def revoke_certificate(
    accounts: Accounts,
    signed: SignedRequest,
    account: ACMEAccountRecord | None,
    authority: str,
    context: RequestContext,
) -> None:
    payload = signed.json()
    der = _b64url(payload.get("certificate"), "certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise ACMEProblem("malformed", "certificate is not a DER X.509 certificate") from None
    code = payload.get("reason", 0)
    if isinstance(code, bool) or not isinstance(code, int) or code not in _BY_CODE:
        allowed = ", ".join(f"{c} ({r.value})" for c, r in sorted(_BY_CODE.items()))
        raise ACMEProblem("badRevocationReason", f"reason must be one of {allowed}")
    reason = _BY_CODE[code]
    core = accounts.core
    try:
        record = core.get_certificate(serial_hex(cert.serial_number), authority)
    except NotFound:
        raise ACMEProblem(
            "malformed", "this CA did not issue that certificate", status=404
        ) from None
    if record.der != der:
        raise ACMEProblem("malformed", "this CA did not issue that certificate", status=404)
    if record.status is CertStatus.REVOKED and record.revocation_reason is not (
        RevocationReason.CERTIFICATE_HOLD
    ):
        raise ACMEProblem("alreadyRevoked", f"certificate {record.serial} is already revoked")
    by_key = account is None and _same_key(signed, cert)
    if account is None and not by_key:
        raise ACMEProblem("unauthorized", "the jwk is not the certificate's public key")
    check_acme_may_revoke(
        f"acme:{account.id}" if account else None,
        record,
        signed_by_certificate_key=by_key,
        authorized_for_all_names=account is not None
        and _authorized(accounts, account, record.sans),
    )
    identity = f"acme:{account.id}" if account else f"acme-key:{record.authority}/{record.serial}"
    actor = Actor(identity, context.request_id, context.client_address)
    core.revoke(record.serial, reason, actor, authority=record.authority)


def _same_key(signed: SignedRequest, cert: x509.Certificate) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        theirs = serialization.load_pem_public_key(signed.key.export_to_pem())
    except (TypeError, ValueError):
        return False
    return bool(theirs.public_bytes(*spki) == cert.public_key().public_bytes(*spki))


def _authorized(accounts: Accounts, account: ACMEAccountRecord, names: tuple[str, ...]) -> bool:
    from ca_service.domain import ACMEIdentifier

    now: dt.datetime = accounts.now()
    with unit_of_work(accounts.core.db) as s:
        repo = AuthorizationRepository(s)
        for name in names:
            kind, _, value = name.partition(":")
            if kind not in ("dns", "ip"):
                return False
            if (
                repo.reusable(account.id, account.authority, ACMEIdentifier(kind, value), now)
                is None
            ):
                return False
    return bool(names)
