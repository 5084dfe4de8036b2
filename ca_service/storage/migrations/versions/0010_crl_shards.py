"""Shard CRLs and delta CRLs

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

A certificate's shard is written into its CRL Distribution Point when it is signed, so it must
be stored with it (``certificates.crl_shard``): derived again later, from a shard count that
may have changed, it could name another shard than the one the certificate points at (the
lesson Boulder learned with its temporal shards). ``status_crl_number`` is the authority's CRL
number when a certificate's status last changed; a delta CRL lists the rows at or above its
base's number. Both columns are NULL for every existing row: those certificates stay on the
full CRL only, and their revocations before this migration are all in the full CRL already.
``crl_parts`` keeps the latest shard and delta CRL of each authority, one row per scope.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy): on SQLite the table keeps its name-search triggers.
    op.add_column("certificates", sa.Column("crl_shard", sa.Integer(), nullable=True))
    op.add_column("certificates", sa.Column("status_crl_number", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_certificates_crl_shard",
        "certificates",
        ["authority_id", "crl_shard", "status_crl_number"],
        unique=False,
    )
    op.create_index(
        "ix_certificates_status_crl_number",
        "certificates",
        ["authority_id", "status_crl_number"],
        unique=False,
    )
    op.create_table(
        "crl_parts",
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("base_number", sa.BigInteger(), nullable=True),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_crl_parts_authority_id_authorities"),
        ),
        sa.PrimaryKeyConstraint("authority_id", "scope", name=op.f("pk_crl_parts")),
    )


def downgrade() -> None:
    op.drop_table("crl_parts")
    op.drop_index("ix_certificates_status_crl_number", table_name="certificates")
    op.drop_index("ix_certificates_crl_shard", table_name="certificates")
    # SQLite 3.35+ drops a column in place (no table copy, so the triggers stay).
    op.drop_column("certificates", "status_crl_number")
    op.drop_column("certificates", "crl_shard")
