"""The store's snapshot for a backup (storage/backup.py) sees one moment: what commits while it
is being read is not in it, on SQLite (the online backup API's copy) and PostgreSQL (one
REPEATABLE READ transaction)."""

from __future__ import annotations

from pathlib import Path

from ca_service.core.facade import Core
from ca_service.storage.backup import snapshot

from ..conftest import ADMIN


def test_rows_committed_while_the_snapshot_is_read_are_not_in_it(ca: Core, tmp_path: Path) -> None:
    ca.issue_with_new_key(ADMIN, common_name="before.example.test")
    seen: dict[str, list[list[object]]] = {}
    columns: dict[str, tuple[str, ...]] = {}
    with snapshot(ca.db, tmp_path) as snap:
        assert snap.revision is not None
        for table in snap.tables():
            if not seen:  # committed after the snapshot began, before any table is read
                ca.issue_with_new_key(ADMIN, common_name="after.example.test")
            seen[table.name] = list(table.rows)
            columns[table.name] = table.columns
    common_name = columns["certificates"].index("common_name")
    names = {row[common_name] for row in seen["certificates"]}
    assert "before.example.test" in names and "after.example.test" not in names
    action = columns["audit_events"].index("action")
    assert [r[action] for r in seen["audit_events"]].count("certificate.issue") == 1
    assert len(seen["authorities"]) == 2
    # Parents before children, and neither alembic's table nor the derived search index.
    order = list(seen)
    assert order.index("authorities") < order.index("certificates")
    assert "alembic_version" not in seen
    assert not any(name.startswith("certificate_names") for name in seen)
    # The snapshot's private copy (SQLite) is left for the caller to remove with its directory.
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.iterdir())
