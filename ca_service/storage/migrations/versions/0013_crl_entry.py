"""Each revoked certificate keeps its CRL entry's DER

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

Issue 15 item 3: at a million revoked certificates most of a full CRL's time was the driver
handing Python three objects per row and Python writing each entry (bench/PROFILES.md, "CRL at
1M from stored entries"). The entry of a revoked certificate (serial, revocation date, reason)
does not change while it stays revoked, so it is written once, with the revocation, and the CRL
asks the database for all of them joined in one value.

No backfill: rows revoked before this migration have no entry, and the CRL encodes those from
their columns as before (``CertificateRepository.stored_crl_entries`` counts them), so nothing
is left out of a CRL and an upgrade is instant at any size.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In place on both databases (no table copy on SQLite, so the name index's triggers stay);
    # a nullable column without a default is instant on PostgreSQL too.
    op.add_column("certificates", sa.Column("crl_entry", sa.LargeBinary(), nullable=True))
    # Revoked rows only, so issuance never writes it; built in one pass over the table (5-8 s
    # with 1M revoked on SQLite).
    # The CRL query names the status literally, so both planners can use it, and it reads the
    # entries from this index alone (SQLite: COVERING INDEX, 0.65 s for 1M against 1.45 s
    # through the table rows).
    op.create_index(
        "ix_certificates_crl_entries",
        "certificates",
        ["authority_id", "status", "not_after", "serial", "crl_entry"],
        sqlite_where=sa.text("status = 'revoked'"),
        postgresql_where=sa.text("status = 'revoked'"),
    )


def downgrade() -> None:
    op.drop_index("ix_certificates_crl_entries", table_name="certificates")
    # SQLite 3.35+ drops a column in place.
    op.drop_column("certificates", "crl_entry")
