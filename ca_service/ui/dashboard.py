"""The dashboard: what an admin checks first. Counts by status, what expires soon, whether
each authority's CRL and OCSP responder are current, and what happened last."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from werkzeug.wrappers import Response

from ca_service.domain import AuthorityRecord
from ca_service.ui import charts
from ca_service.ui.blueprint import render, ui
from ca_service.ui.format import duration
from ca_service.ui.session import is_admin, signed_in
from ca_service.web.extensions import core


@dataclass(frozen=True)
class Publishing:
    """One authority's revocation publishing, as the dashboard shows it."""

    authority: AuthorityRecord
    crl_number: int | None
    crl_age: str | None
    crl_next_update: dt.datetime | None
    crl_overdue: bool
    ocsp: str


def _publishing(record: AuthorityRecord, now: dt.datetime) -> Publishing:
    ca = core()
    header = ca.catalog.crl_header(record.name)
    if ca.settings.ocsp_sign_with_ca:
        ocsp = f"signed by the CA itself, valid until {record.not_after:%Y-%m-%d %H:%M} UTC"
    else:
        responder = ca.catalog.ocsp_responder(record.name, now)
        ocsp = (
            "no responder yet (one is made at the first OCSP request)"
            if responder is None
            else f"responder {responder.serial[:16]}…, valid "
            f"{responder.not_before:%Y-%m-%d %H:%M} to {responder.not_after:%Y-%m-%d %H:%M} UTC"
        )
    if header is None:
        return Publishing(record, None, None, None, False, ocsp)
    number, this_update, next_update = header
    return Publishing(
        record, number, duration(now - this_update), next_update, next_update <= now, ocsp
    )


@ui.get("/ui/")
@signed_in()
def dashboard() -> Response:
    ca = core()
    now = ca.clock.now()
    authorities = ca.list_authorities()
    counts = ca.catalog.status_counts(now)
    histogram = ca.catalog.expiry_histogram(now, days=90)
    return render(
        "dashboard.html",
        title="Dashboard",
        nav="ui.dashboard",
        counts=counts,
        chart=charts.expiry_chart(histogram, now),
        publishing=[_publishing(a, now) for a in authorities],
        # The audit log is the admin's (as GET /api/v1/audit): a reader sees none of it.
        events=ca.catalog.latest_audit_events(10) if is_admin() else None,
        now=now,
    )
