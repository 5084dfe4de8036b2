"""CA and OCSP responder keys in the database

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

With a data directory per replica, a key file made on one node was missing on the others (OCSP
answered 503 there, issue 14). The encrypted PKCS#8 PEM moves into this table, so the database
is the only state replicas share. Existing key files are copied in at the next start (or by
``ca-service keys import``), not here: a migration has no passphrase to check them with, and
runs where the files may not be.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_blobs",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("pem_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_key_blobs")),
    )


def downgrade() -> None:
    op.drop_table("key_blobs")
