"""ACME: accounts, orders, authorizations, challenges, nonces and EAB keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

RFC 8555 state kept in the one database, so that every worker and replica sees the same
accounts, orders and nonces: a nonce is a row that the request using it deletes, which makes
it single-use everywhere. Nothing here is written by the core; ca_service/acme/ owns it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("authority", sa.String(length=64), nullable=False),
        sa.Column("jwk", sa.JSON(), nullable=False),
        sa.Column("thumbprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contact", sa.JSON(), nullable=True),
        sa.Column("eab_kid", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_accounts")),
        sa.UniqueConstraint(
            "authority", "thumbprint", name="uq_acme_accounts_authority_thumbprint"
        ),
    )
    op.create_table(
        "acme_eab_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("hmac_key_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_acme_eab_keys")),
    )
    op.create_table(
        "acme_nonces",
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("value", name=op.f("pk_acme_nonces")),
    )
    op.create_index(op.f("ix_acme_nonces_expires_at"), "acme_nonces", ["expires_at"], unique=False)
    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("authority", sa.String(length=64), nullable=False),
        sa.Column("identifier_type", sa.String(length=8), nullable=False),
        sa.Column("identifier_value", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["acme_accounts.id"],
            name=op.f("fk_acme_authorizations_account_id_acme_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_authorizations")),
    )
    op.create_index(
        "ix_acme_authz_reuse",
        "acme_authorizations",
        ["account_id", "identifier_type", "identifier_value"],
        unique=False,
    )
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("authority", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("identifiers", sa.JSON(), nullable=False),
        sa.Column("authz_ids", sa.JSON(), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("certificate_serial", sa.String(length=42), nullable=True),
        sa.Column("replaces", sa.String(length=42), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["acme_accounts.id"],
            name=op.f("fk_acme_orders_account_id_acme_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_orders")),
    )
    op.create_index(
        "ix_acme_orders_account_created", "acme_orders", ["account_id", "created_at"], unique=False
    )
    op.create_index(
        op.f("ix_acme_orders_certificate_serial"),
        "acme_orders",
        ["certificate_serial"],
        unique=False,
    )
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("authz_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("validated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["authz_id"],
            ["acme_authorizations.id"],
            name=op.f("fk_acme_challenges_authz_id_acme_authorizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_challenges")),
    )
    op.create_index(
        op.f("ix_acme_challenges_account_id"), "acme_challenges", ["account_id"], unique=False
    )
    op.create_index("ix_acme_challenges_authz", "acme_challenges", ["authz_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_acme_challenges_authz", table_name="acme_challenges")
    op.drop_index(op.f("ix_acme_challenges_account_id"), table_name="acme_challenges")
    op.drop_table("acme_challenges")
    op.drop_index(op.f("ix_acme_orders_certificate_serial"), table_name="acme_orders")
    op.drop_index("ix_acme_orders_account_created", table_name="acme_orders")
    op.drop_table("acme_orders")
    op.drop_index("ix_acme_authz_reuse", table_name="acme_authorizations")
    op.drop_table("acme_authorizations")
    op.drop_index(op.f("ix_acme_nonces_expires_at"), table_name="acme_nonces")
    op.drop_table("acme_nonces")
    op.drop_table("acme_eab_keys")
    op.drop_table("acme_accounts")
