"""OCSP responder certificates

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ocsp_responders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("cert_der", sa.LargeBinary(), nullable=False),
        sa.Column("key_file", sa.String(length=255), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_ocsp_responders_authority_id_authorities"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ocsp_responders")),
    )
    op.create_index(
        "ix_ocsp_responders_authority", "ocsp_responders", ["authority_id", "not_after"]
    )


def downgrade() -> None:
    op.drop_index("ix_ocsp_responders_authority", table_name="ocsp_responders")
    op.drop_table("ocsp_responders")
