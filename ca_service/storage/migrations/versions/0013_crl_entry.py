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


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place.
    op.drop_column("certificates", "crl_entry")
