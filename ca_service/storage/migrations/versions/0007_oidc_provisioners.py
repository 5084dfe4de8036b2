"""OIDC provisioners and used ID token ids

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

Provisioners live in the database so every replica trusts the same issuers; the used ``jti``
of each ID token is a row until the token expires, so a replay is refused everywhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_provisioners",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("audience", sa.String(length=512), nullable=False),
        sa.Column("jwks_uri", sa.String(length=1024), nullable=True),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("allowed_names", sa.JSON(), nullable=False),
        sa.Column("profiles", sa.JSON(), nullable=True),
        sa.Column("max_validity_days", sa.Integer(), nullable=True),
        sa.Column("authorities", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_oidc_provisioners")),
    )
    op.create_index(
        op.f("ix_oidc_provisioners_issuer"), "oidc_provisioners", ["issuer"], unique=False
    )
    op.create_table(
        "oidc_used_tokens",
        sa.Column("issuer", sa.String(length=512), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name=op.f("pk_oidc_used_tokens")),
    )
    op.create_index(
        op.f("ix_oidc_used_tokens_expires_at"), "oidc_used_tokens", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_oidc_used_tokens_expires_at"), table_name="oidc_used_tokens")
    op.drop_table("oidc_used_tokens")
    op.drop_index(op.f("ix_oidc_provisioners_issuer"), table_name="oidc_provisioners")
    op.drop_table("oidc_provisioners")
