"""Issue item 6: the store. Schema by Alembic only, SQLite pragmas, PostgreSQL, record fields, and
(authority, serial) uniqueness enforced by the database itself."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy.exc import IntegrityError

from ca_service.clock import FixedClock
from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import CallerPolicy, CertificateFilter, CertStatus, RevocationReason, Role
from ca_service.errors import ConfigError, NotFound
from ca_service.signing.serials import serial_hex
from ca_service.storage import migrate
from ca_service.storage.db import Database, unit_of_work
from ca_service.storage.models import Base, include_object
from ca_service.storage.repositories import AuditRepository, CertificateRepository
from ca_service.storage.tokens import TokenRepository
from ca_service.wiring import build_authority

from ..conftest import ADMIN, new_ca
from ..helpers import count_rows, csr_pem, make_key


# SQLite's reflection skips expression indexes, with this warning; include_object leaves that one
# out on both databases (tests/storage/test_ui_queries.py checks that queries use it).
@pytest.mark.filterwarnings(
    "ignore:Skipped unsupported reflection of expression-based index ix_certificates_requester_kind"
)
def test_schema_comes_only_from_migrations(settings: Settings) -> None:
    db = Database(settings.resolved_database_url)
    try:
        script = ScriptDirectory.from_config(migrate._config())
        (head,) = script.get_heads()
        waiting = migrate.pending(db)
        assert waiting[0] == "0001" and waiting[-1] == head
        with pytest.raises(ConfigError, match="db upgrade"):
            build_authority(settings, db=db)
        with db.engine.connect() as conn:
            assert "certificates" not in sa.inspect(conn).get_table_names()
        migrate.upgrade(db)
        assert migrate.pending(db) == []
        with db.engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            assert version == head
            # The migrations and the models describe exactly the same schema (but for the name
            # search index, which the models cannot state; tests/storage/test_search.py checks it).
            context = MigrationContext.configure(conn, opts={"include_object": include_object})
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
        migrate.upgrade(db)  # idempotent
        assert migrate.pending(db) == []
    finally:
        db.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.dispose()


def _row_values(ca: Core, serial: str) -> dict[str, object]:
    with ca.db.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT * FROM certificates WHERE serial = :s"), {"s": serial}
        ).mappings()
        return dict(row.one())


def _insert(ca: Core, values: dict[str, object]) -> None:
    columns = [c for c in values if c != "id"]
    sql = (
        f"INSERT INTO certificates ({', '.join(columns)}) "  # noqa: S608
        f"VALUES ({', '.join(':' + c for c in columns)})"
    )
    with ca.db.engine.begin() as conn:
        conn.execute(sa.text(sql), {c: values[c] for c in columns})


def test_authority_serial_unique_in_the_database(ca: Core) -> None:
    serial = ca.issue_with_new_key(ADMIN, common_name="dup.example.test").record.serial
    values = _row_values(ca, serial)
    duplicate = dict(values, fingerprint_sha256="ab" * 32)
    with pytest.raises(IntegrityError):
        _insert(ca, duplicate)
    assert count_rows(ca.db, "certificates") == 3  # root, intermediate, the leaf
    # The same serial under another authority is a different certificate and is allowed.
    with ca.db.engine.connect() as conn:
        other = conn.execute(
            sa.text("SELECT id FROM authorities WHERE id != :a"), {"a": values["authority_id"]}
        ).scalar_one()
    _insert(ca, dict(duplicate, authority_id=other))
    assert count_rows(ca.db, "certificates") == 4


def test_foreign_keys_enforced(ca: Core) -> None:
    serial = ca.issue_with_new_key(ADMIN, common_name="fk.example.test").record.serial
    orphan = dict(
        _row_values(ca, serial), authority_id=999_999, serial="01", fingerprint_sha256="c" * 64
    )
    with pytest.raises(IntegrityError):
        _insert(ca, orphan)


def test_record_fields_match_the_certificate(settings: Settings) -> None:
    clock = FixedClock(dt.datetime.now(dt.UTC))
    ca = new_ca(settings)
    ca.clock = clock
    try:
        issued = ca.issue_from_csr(
            csr_pem(make_key("p256"), "rec.example.test"),
            ADMIN,
            profile="peer",
            validity_days=30,
            extra_names=["10.2.3.4", "email:ops@example.test"],
        )
        record = ca.get_certificate(issued.record.serial)
        assert record == issued.record
        cert = x509.load_der_x509_certificate(record.der)
        assert record.authority == "default"
        assert record.serial == serial_hex(cert.serial_number)
        assert record.subject == "CN=rec.example.test"
        assert record.common_name == "rec.example.test"
        assert record.sans == ("dns:rec.example.test", "ip:10.2.3.4", "email:ops@example.test")
        assert record.key_type == "ecdsa-p256"
        assert record.profile == "peer"
        assert (
            record.not_before == cert.not_valid_before_utc == clock.now() - dt.timedelta(seconds=60)
        )
        assert record.not_after == cert.not_valid_after_utc == clock.now() + dt.timedelta(days=30)
        assert record.status is CertStatus.VALID
        assert record.revoked_at is None and record.revocation_reason is None
        assert record.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
        assert record.der == cert.public_bytes(serialization.Encoding.DER)
        assert record.requester == ADMIN.identity
        assert record.created_at == clock.now()
        assert record.created_at.tzinfo is not None
        # Expired is derived at read time, never stored.
        assert record.status_at(clock.now() + dt.timedelta(days=31)) is CertStatus.EXPIRED
        with unit_of_work(ca.db) as s:
            events = AuditRepository(s).list(action="certificate.issue")
            assert [e.target for e in events] == [f"default/{record.serial}"]
            assert events[0].actor == ADMIN.identity
    finally:
        ca.db.dispose()


def test_listing_filters(ca: Core) -> None:
    a = ca.issue_with_new_key(ADMIN, common_name="alpha.example.test", validity_days=10).record
    b = ca.issue_with_new_key(ADMIN, common_name="beta.example.test").record
    ca.revoke(b.serial, RevocationReason.SUPERSEDED, ADMIN)
    now = dt.datetime.now(dt.UTC)

    def serials(**kwargs: object) -> list[str]:
        with unit_of_work(ca.db) as s:
            records, _ = CertificateRepository(s).list(CertificateFilter(**kwargs), now)  # type: ignore[arg-type]
        return [r.serial for r in records if r.profile != "ca"]

    assert serials(authority="default") == [b.serial, a.serial]
    assert serials(status=CertStatus.REVOKED) == [b.serial]
    assert serials(status=CertStatus.VALID) == [a.serial]
    assert serials(name="ALPHA") == [a.serial]
    assert serials(name="%") == []
    assert serials(expires_before=now + dt.timedelta(days=20)) == [a.serial]
    assert serials(status=CertStatus.EXPIRED) == []


def test_serial_collision_is_retried_with_a_new_serial(ca: Core) -> None:
    taken = ca.issue_with_new_key(ADMIN, common_name="first.example.test").record.serial
    fresh = (1 << 100) + 12345
    ca.serials = itertools.chain([int(taken, 16)], itertools.repeat(fresh)).__next__
    second = ca.issue_with_new_key(ADMIN, common_name="second.example.test").record
    assert second.serial == serial_hex(fresh) != taken
    assert count_rows(ca.db, "certificates") == 4


def test_token_repository_returns_records_and_revokes_once(ca: Core) -> None:
    """Token rows stay in storage (issue 10, item 3): records in and out, the hash only for
    authentication, a second revocation changes nothing."""
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    policy = CallerPolicy(allowed_names=("*.t.example.test",), profiles=("server",))
    with unit_of_work(ca.db, write=True) as s:
        repo = TokenRepository(s)
        made = repo.add(
            token_id="0123456789abcdef",
            name="ci",
            role=Role.ISSUER,
            secret_sha256="ab" * 32,
            policy=policy,
            created_by="x" * 300,
            created_at=now,
            expires_at=None,
        )
        repo.add(
            token_id="fedcba9876543210",
            name="root",
            role=Role.ADMIN,
            secret_sha256="cd" * 32,
            policy=CallerPolicy(),
            created_by="cli:test",
            created_at=now + dt.timedelta(seconds=1),
            expires_at=None,
        )
    assert made.policy == policy and made.created_by == "x" * 255 and made.created_at == now
    with unit_of_work(ca.db) as s:
        repo = TokenRepository(s)
        assert repo.find_with_hash("0123456789abcdef") == (made, "ab" * 32)
        assert repo.find_with_hash("0000000000000000") is None
        listed = repo.list()
        assert [t.id for t in listed] == ["fedcba9876543210", "0123456789abcdef"]
        # An admin's stored policy is never read: admins are unrestricted.
        assert listed[0].policy == CallerPolicy.unrestricted() and repo.count() == 2
    later = now + dt.timedelta(days=1)
    with unit_of_work(ca.db, write=True) as s:
        revoked, changed = TokenRepository(s).revoke("0123456789abcdef", later)
    assert changed and revoked.revoked_at == later and revoked.state(later) == "revoked"
    with unit_of_work(ca.db, write=True) as s:
        again, changed = TokenRepository(s).revoke("0123456789abcdef", later + dt.timedelta(1))
    assert not changed and again.revoked_at == later
    with pytest.raises(NotFound), unit_of_work(ca.db, write=True) as s:
        TokenRepository(s).revoke("0000000000000000", later)
