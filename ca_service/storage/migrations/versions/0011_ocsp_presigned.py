"""Pre-signed OCSP answers and the per-authority status-change stamp

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01

Issue 15 item 2: nonce-less OCSP answers are signed once per certificate and kept here (RFC 5019),
refreshed before their nextUpdate; ``ocsp_stamps`` is what replicas poll to learn that a
certificate's status changed, since they share only the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ocsp_presigned",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("cert_id", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=80), nullable=False),
        sa.Column("responder_serial", sa.String(length=42), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refresh_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_ocsp_presigned_authority_id_authorities"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ocsp_presigned")),
        sa.UniqueConstraint("authority_id", "serial", "cert_id", name="uq_ocsp_presigned_cert_id"),
    )
    op.create_index("ix_ocsp_presigned_refresh_at", "ocsp_presigned", ["refresh_at"])
    op.create_table(
        "ocsp_stamps",
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_ocsp_stamps_authority_id_authorities"),
        ),
        sa.PrimaryKeyConstraint("authority_id", name=op.f("pk_ocsp_stamps")),
    )


def downgrade() -> None:
    op.drop_table("ocsp_stamps")
    op.drop_index("ix_ocsp_presigned_refresh_at", table_name="ocsp_presigned")
    op.drop_table("ocsp_presigned")
