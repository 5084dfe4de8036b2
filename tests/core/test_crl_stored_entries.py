"""A revoked certificate keeps its CRL entry's DER (migration 0013), and a full CRL joins the
stored entries in the database (issue 15 item 3). What must hold: the stored entry is the one a
CRL built from the row's columns holds, it follows hold, the move from hold to a final reason
and release, and a row without one (revoked before the migration, or written by anything that
does not store it) is still listed."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from cryptography import x509

from ca_service.core.facade import Core
from ca_service.domain import RevocationReason
from ca_service.signing import crl as crl_encoding
from ca_service.storage.db import unit_of_work
from ca_service.storage.models import CertificateRow

from ..conftest import ADMIN

ENTRY = CertificateRow.__table__.c.crl_entry


def _issue(ca: Core, name: str) -> str:
    return ca.issue_with_new_key(ADMIN, common_name=name).record.serial


def _stored_entry(ca: Core, serial: str) -> bytes | None:
    with unit_of_work(ca.db) as s:
        value = s.execute(sa.select(ENTRY).where(CertificateRow.serial == serial)).scalar_one()
    return bytes(value) if value is not None else None


def _listed(ca: Core) -> dict[int, tuple[dt.datetime, x509.ReasonFlags | None]]:
    crl = x509.load_der_x509_crl(ca.generate_crl().der)
    out: dict[int, tuple[dt.datetime, x509.ReasonFlags | None]] = {}
    for e in crl:
        try:
            reason = e.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        out[e.serial_number] = (e.revocation_date_utc, reason)
    return out


def test_the_stored_entry_is_in_the_crl_and_follows_hold_and_release(ca: Core) -> None:
    serial = _issue(ca, "held.stored.example.test")
    assert _stored_entry(ca, serial) is None
    ca.revoke(serial, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    held = _stored_entry(ca, serial)
    assert held is not None and held in ca.generate_crl().der
    assert _listed(ca)[int(serial, 16)][1] is x509.ReasonFlags.certificate_hold

    ca.revoke(serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    final = _stored_entry(ca, serial)
    assert final is not None and final != held
    der = ca.generate_crl().der
    assert final in der and held not in der
    assert _listed(ca)[int(serial, 16)][1] is x509.ReasonFlags.key_compromise

    other = _issue(ca, "released.stored.example.test")
    ca.revoke(other, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    ca.release_hold(other, ADMIN)
    assert _stored_entry(ca, other) is None
    assert int(other, 16) not in _listed(ca)


def test_a_revoked_row_without_a_stored_entry_is_still_listed(ca: Core) -> None:
    """A row revoked before migration 0013 has no entry; the database's join skips NULLs, so
    without the count of such rows it would silently leave a revoked certificate out."""
    serials = [_issue(ca, f"old{i}.stored.example.test") for i in range(3)]
    for serial in serials:
        ca.revoke(serial, RevocationReason.SUPERSEDED, ADMIN)
    before = _listed(ca)
    with unit_of_work(ca.db, write=True) as s:
        s.execute(
            sa.update(CertificateRow)
            .where(CertificateRow.serial == serials[1])
            .values(crl_entry=None)
        )
    after = _listed(ca)
    assert {int(x, 16) for x in serials} <= set(after)
    assert after == before


def test_with_no_stored_entry_at_all_the_crl_is_the_same(ca: Core) -> None:
    """Only rows without entries (a store upgraded to 0013, nothing revoked since): the CRL
    lists the same entries as when they are stored."""
    serials = [_issue(ca, f"all{i}.stored.example.test") for i in range(2)]
    ca.revoke(serials[0], RevocationReason.KEY_COMPROMISE, ADMIN)
    ca.revoke(serials[1], RevocationReason.UNSPECIFIED, ADMIN)
    stored = _listed(ca)
    with unit_of_work(ca.db, write=True) as s:
        s.execute(sa.update(CertificateRow).values(crl_entry=None))
    assert _listed(ca) == stored and len(stored) >= 2


@pytest.mark.parametrize(
    ("serial", "when", "reason"),
    [
        ("01", dt.datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=dt.UTC), None),
        ("7f", dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC), "keyCompromise"),
        ("80", dt.datetime(2050, 1, 1, tzinfo=dt.UTC), "certificateHold"),
        ("00ff", dt.datetime(1999, 1, 1, tzinfo=dt.UTC), "unspecified"),
        ("abc", dt.datetime(2030, 6, 1, 12, 0, 0, tzinfo=dt.UTC), "superseded"),
        ("7" + "f" * 39, dt.datetime(2051, 2, 3, 4, 5, 6, tzinfo=dt.UTC), "affiliationChanged"),
        ("8" + "0" * 39, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "cessationOfOperation"),
    ],
)
def test_entry_der_is_what_the_row_encoder_writes(
    serial: str, when: dt.datetime, reason: str | None
) -> None:
    """Both time forms a row comes in (a datetime; SQLite's stored text), every serial shape."""
    stored = crl_encoding.entry_der(serial, when, reason)
    as_text = when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    for row_time in (when, as_text):
        chunks, count = crl_encoding._entries([(serial, row_time, reason)])
        assert count == 1 and b"".join(chunks) == stored


def test_sqlite_reads_the_stored_entries_from_the_partial_index_alone(ca: Core) -> None:
    """SQLite keeps no statistics, so this plan is the plan at 1M: the entries come from the
    covering index of migration 0013 (0.65 s for 1M), not from the table rows (1.45 s)."""
    if not ca.db.is_sqlite:
        pytest.skip("PostgreSQL's plan depends on its statistics; this store is tiny")
    ca.revoke(_issue(ca, "plan.stored.example.test"), RevocationReason.SUPERSEDED, ADMIN)
    captured: list[tuple[str, object]] = []

    def capture(*args: object) -> None:
        if "group_concat" in str(args[2]):
            captured.append((str(args[2]), args[3]))

    engines = {ca.db.engine, ca.db.write_engine}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        ca.generate_crl()
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", capture)
    assert captured  # (a revocation may have started a CRL of its own meanwhile)
    statement, params = captured[-1]
    with ca.db.engine.connect() as conn:
        plan = " | ".join(
            str(r[3])
            for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)  # type: ignore[arg-type]
        )
    assert "COVERING INDEX ix_certificates_crl_entries" in plan, plan
