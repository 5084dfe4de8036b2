"""The certificate list and each certificate's page: search, filters, the details, downloads,
and revocation with a confirmation step (admins only).

The list is a GET form (parameter ``q`` and the filters), so every search has a URL to share;
its pages are keyset pages (Catalog.search_certificates). Revocation goes through Core.revoke,
the same door the API uses, as the signed-in token: the first POST only shows what would be
revoked and asks again; a reader is refused before anything is read (403, audited).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from ca_service.domain import (
    MAX_EXPIRING_DAYS,
    REQUESTER_KINDS,
    CertificateQuery,
    CertificateRecord,
    CertificateSort,
    CertificateState,
    CertStatus,
    RevocationReason,
    Role,
)
from ca_service.errors import BadRequest
from ca_service.policy import authorization
from ca_service.ui import charts, x509_text
from ca_service.ui.blueprint import given, render, ui
from ca_service.ui.crl_check import crl_listing
from ca_service.ui.session import actor, current, is_admin, signed_in
from ca_service.web.extensions import core

PAGE_SIZE = 50
STATES = {
    CertificateState.VALID: "Valid",
    CertificateState.ON_HOLD: "On hold",
    CertificateState.REVOKED: "Revoked",
    CertificateState.EXPIRED: "Expired",
}
SORTS = {
    CertificateSort.ISSUED: "Issue time, newest first",
    CertificateSort.EXPIRY: "Expiry, soonest first",
}
FILTERS = ("q", "status", "authority", "profile", "requester", "expiring", "sort")


@dataclass
class Form:
    """The list's filters as the user sent them, and what was wrong with each (by field)."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)


def state_of(record: CertificateRecord, now: dt.datetime) -> CertificateState:
    status = record.status_at(now)
    if (
        status is CertStatus.REVOKED
        and record.revocation_reason is RevocationReason.CERTIFICATE_HOLD
    ):
        return CertificateState.ON_HOLD
    return CertificateState(status.value)


def _query(
    args: MultiDict[str, str], authorities: set[str], profiles: set[str]
) -> tuple[Form, CertificateQuery | None]:
    form = Form({k: args.get(k, "").strip() for k in FILTERS})
    v, errors = form.values, form.errors
    q = v["q"] or None
    if q is not None and len(q) > 255:
        errors["q"] = "The search text is longer than 255 characters."
    status = None
    if v["status"]:
        try:
            status = CertificateState(v["status"])
        except ValueError:
            errors["status"] = "Choose a status from the list."
    if v["authority"] and v["authority"] not in authorities:
        errors["authority"] = "There is no such authority."
    if v["profile"] and v["profile"] not in profiles:
        errors["profile"] = "There is no such profile."
    if v["requester"] and v["requester"] not in REQUESTER_KINDS:
        errors["requester"] = "Choose a requester kind from the list."
    days = None
    if v["expiring"]:
        if v["expiring"].isdigit() and int(v["expiring"]) <= MAX_EXPIRING_DAYS:
            days = int(v["expiring"])
        else:
            errors["expiring"] = f"Enter a whole number of days from 0 to {MAX_EXPIRING_DAYS}."
    sort = CertificateSort.ISSUED
    if v["sort"]:
        try:
            sort = CertificateSort(v["sort"])
        except ValueError:
            errors["sort"] = "Choose an order from the list."
    cursor = args.get("cursor") or None
    if cursor is not None and len(cursor) > 200:
        errors["cursor"] = "This page link is not valid; start again from the first page."
    if errors:
        return form, None
    query = CertificateQuery(
        q=q,
        authority=v["authority"] or None,
        status=status,
        profile=v["profile"] or None,
        requester_kind=v["requester"] or None,
        expiring_within_days=days,
        sort=sort,
        cursor=cursor,
        limit=PAGE_SIZE,
    )
    return form, query


def _list_url(form: Form, cursor: str | None) -> str:
    """The same search on another page: the filters as sent, and the cursor."""
    params = given(form.values)
    if cursor:
        params["cursor"] = cursor
    return url_for("ui.certificates", **params)


@ui.get("/ui/certificates")
@signed_in()
def certificates() -> Response:
    ca = core()
    now = ca.clock.now()
    authorities = sorted(a.name for a in ca.list_authorities())
    profiles = sorted(ca.settings.profiles)
    form, query = _query(request.args, set(authorities), set(profiles))
    records: list[CertificateRecord] = []
    next_url = None
    if query is not None:
        try:
            page = ca.catalog.search_certificates(query, now)
        except BadRequest as exc:
            # The search text or the cursor (the catalog's own checks): said at the field.
            form.errors["cursor" if query.cursor and "cursor" in exc.detail else "q"] = exc.detail
        else:
            records = page.records
            if page.next_cursor:
                next_url = _list_url(form, page.next_cursor)
    first_url = _list_url(form, None) if request.args.get("cursor") else None
    return render(
        "certificates.html",
        400 if form.errors else 200,
        title="Certificates",
        nav="ui.certificates",
        form=form,
        records=records,
        states=STATES,
        state_of=lambda r: state_of(r, now),
        sorts=SORTS,
        authorities=authorities,
        profiles=profiles,
        requester_kinds=REQUESTER_KINDS,
        next_url=next_url,
        first_url=first_url,
    )


def _record(authority: str, serial: str) -> CertificateRecord:
    """The certificate this URL names (NotFound: no such authority or serial)."""
    return core().get_certificate(serial, authority)


def _is_authority_certificate(record: CertificateRecord) -> bool:
    return any(a.cert_der == record.der for a in core().list_authorities())


@ui.get("/ui/certificates/<authority>/<serial>")
@signed_in()
def certificate(authority: str, serial: str) -> Response:
    ca = core()
    now = ca.clock.now()
    record = ca.catalog.with_acme_orders([_record(authority, serial)])[0]
    cert = x509.load_der_x509_certificate(record.der)
    state = state_of(record, now)
    done = request.args.get("done")
    listing = None
    if record.status is CertStatus.REVOKED or done == "released":
        # Right after a revocation the CRL was just re-signed; if that ran in the background,
        # wait briefly for it rather than show a number that does not list it yet.
        listing = crl_listing(
            record.authority,
            record.serial,
            listed=record.status is CertStatus.REVOKED,
            wait_seconds=3.0 if done in ("revoked", "released") else 0,
        )
    intermediates, root = ca.issuer_chain(record.authority)
    chain_pem = [*intermediates, root] if root else list(intermediates)
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in chain_pem]
    sha256, sha1 = x509_text.fingerprints(record.der)
    return render(
        "certificate.html",
        title=f"Certificate {record.common_name or record.serial}",
        nav="ui.certificates",
        record=record,
        cert=cert,
        state=state,
        state_label=STATES[state],
        issuer=cert.issuer.rfc4514_string(),
        public_key=x509_text.public_key_text(cert),
        extensions=x509_text.extensions(cert),
        validity=charts.validity_bar(record.not_before, record.not_after, now),
        chain=chain,
        sha256=sha256,
        sha1=sha1,
        history=ca.catalog.certificate_history(record.authority, record.serial)
        if is_admin()
        else None,
        listing=listing,
        done=done,
        reasons=list(RevocationReason),
        may_revoke=is_admin()
        and state in (CertificateState.VALID, CertificateState.ON_HOLD)
        and not _is_authority_certificate(record),
        may_release=is_admin() and state is CertificateState.ON_HOLD,
    )


def _download(record: CertificateRecord, kind: str) -> Response:
    cert = x509.load_der_x509_certificate(record.der)
    name = f"{record.authority}-{record.serial}"
    if kind == "der":
        body: bytes = record.der
        mimetype, filename = "application/pkix-cert", f"{name}.cer"
    elif kind == "pem":
        body = cert.public_bytes(serialization.Encoding.PEM)
        mimetype, filename = "application/x-pem-file", f"{name}.pem"
    else:
        intermediates, _ = core().issuer_chain(record.authority)
        body = cert.public_bytes(serialization.Encoding.PEM) + "".join(intermediates).encode()
        mimetype, filename = "application/pem-certificate-chain", f"{name}.fullchain.pem"
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@ui.get("/ui/certificates/<authority>/<serial>/certificate.pem")
@signed_in()
def certificate_pem(authority: str, serial: str) -> Response:
    return _download(_record(authority, serial), "pem")


@ui.get("/ui/certificates/<authority>/<serial>/certificate.der")
@signed_in()
def certificate_der(authority: str, serial: str) -> Response:
    return _download(_record(authority, serial), "der")


@ui.get("/ui/certificates/<authority>/<serial>/fullchain.pem")
@signed_in()
def certificate_fullchain(authority: str, serial: str) -> Response:
    return _download(_record(authority, serial), "fullchain")


@ui.post("/ui/certificates/<authority>/<serial>/revoke")
@signed_in(Role.ADMIN)
def revoke(authority: str, serial: str) -> Response:
    """The first POST asks for confirmation, naming the certificate; the second revokes."""
    reason = RevocationReason.parse(request.form.get("reason", ""))
    record = _record(authority, serial)
    if request.form.get("confirm") != "yes":
        return render(
            "confirm_revoke.html",
            title="Confirm revocation",
            nav="ui.certificates",
            record=record,
            reason=reason,
        )
    ca = core()
    ca.revoke(
        record.serial,
        reason,
        actor(),
        authority=record.authority,
        requester_only=authorization.revokes_only_own(current().token),
    )
    target = url_for(
        "ui.certificate", authority=record.authority, serial=record.serial, done="revoked"
    )
    return Response(status=303, headers={"Location": target})


@ui.post("/ui/certificates/<authority>/<serial>/release")
@signed_in(Role.ADMIN)
def release(authority: str, serial: str) -> Response:
    record = _record(authority, serial)
    core().release_hold(record.serial, actor(), authority=record.authority)
    target = url_for(
        "ui.certificate", authority=record.authority, serial=record.serial, done="released"
    )
    return Response(status=303, headers={"Location": target})
