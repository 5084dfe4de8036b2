"""The serial's own index goes: the unique (authority_id, serial) index serves its lookups

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

Issue 15 item 1, issuance with 1M stored: every certificate adds an entry at a random place in
each index keyed by its serial or fingerprint, and at 1M those indexes no longer fit the
database's cache, so each such index costs a read and, after a checkpoint, a full page image in
the WAL per certificate (bench/PROFILES.md, "Issuance with 1M stored, PostgreSQL"). The serial
had two: ``ix_certificates_serial`` and ``uq_certificates_authority_serial``. A lookup by serial
alone now asks the unique index once per authority (a handful of probes:
``CertificateRepository.find``), so the first is dropped. Dropping an index is instant on both
databases.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_certificates_serial", table_name="certificates")


def downgrade() -> None:
    op.create_index("ix_certificates_serial", "certificates", ["serial"], unique=False)
