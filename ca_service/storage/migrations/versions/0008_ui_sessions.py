"""Admin web UI sessions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

Sessions live in the database, not in a worker's memory or a signed cookie, so that any replica
serves any request of a session and revoking a token ends its sessions at once everywhere.

The indexes of the admin UI's pages come with it (storage/search.py, measured at 1M certificates
in bench/ui_pages.py): each list filter's index ends with the id, so a newest-first page walks
it in order and stops at the page size, whether the value is common or rare; the sort by expiry
walks (not_after, id), or (status, not_after, id) when only valid or expired ones are asked for;
a certificate's history looks its audit events up by target. The requester kind (the text
before the first ':') is an expression index, written per database like the name search of 0005
(the models cannot state it; schema comparison leaves it out).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# The certificate list's indexes (the models state the same ones, in CertificateRow).
CERTIFICATE_INDEXES = {
    "ix_certificates_authority_id_id": ["authority_id", "id"],
    "ix_certificates_profile_id": ["profile", "id"],
    "ix_certificates_not_after_id": ["not_after", "id"],
    "ix_certificates_status_expiry": ["status", "not_after", "id"],
    "ix_certificates_hold": ["revocation_reason", "authority_id", "id"],
}
# The requester kind, as storage/search.py's query writes it, character for character: a
# database uses an expression index only for the very same expression.
REQUESTER_KIND_INDEX = "ix_certificates_requester_kind"
REQUESTER_KIND = {
    "sqlite": "substr(requester, 1, instr(requester || ':', ':') - 1)",
    "postgresql": "split_part(requester, ':', 1)",
}


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.id"],
            name=op.f("fk_ui_sessions_token_id_api_tokens"),
        ),
        sa.PrimaryKeyConstraint("id_sha256", name=op.f("pk_ui_sessions")),
    )
    op.create_index(op.f("ix_ui_sessions_token_id"), "ui_sessions", ["token_id"], unique=False)
    op.create_index(op.f("ix_ui_sessions_expires_at"), "ui_sessions", ["expires_at"], unique=False)

    op.drop_index("ix_certificates_not_after", table_name="certificates")
    for name, columns in CERTIFICATE_INDEXES.items():
        op.create_index(name, "certificates", columns, unique=False)
    op.create_index("ix_audit_events_target_id", "audit_events", ["target", "id"], unique=False)
    dialect = op.get_bind().dialect.name
    if dialect in REQUESTER_KIND:
        op.execute(
            f"CREATE INDEX {REQUESTER_KIND_INDEX} ON certificates ({REQUESTER_KIND[dialect]}, id)"
        )
    if dialect == "postgresql":
        op.execute("ANALYZE certificates")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {REQUESTER_KIND_INDEX}")
    op.drop_index("ix_audit_events_target_id", table_name="audit_events")
    for name in CERTIFICATE_INDEXES:
        op.drop_index(name, table_name="certificates")
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"], unique=False)
    op.drop_index(op.f("ix_ui_sessions_expires_at"), table_name="ui_sessions")
    op.drop_index(op.f("ix_ui_sessions_token_id"), table_name="ui_sessions")
    op.drop_table("ui_sessions")
