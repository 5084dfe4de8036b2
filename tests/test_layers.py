"""Every SQL statement lives in ``ca_service/storage/`` (issue 10, item 3).

No module outside storage imports SQLAlchemy, so no front end, policy or domain module can
build a query or hold an ORM row of its own; ``domain.py`` holds the records that cross over.
"""

from __future__ import annotations

import re
from pathlib import Path

import ca_service

PACKAGE = Path(ca_service.__file__).parent
SQLALCHEMY_IMPORT = re.compile(r"^\s*(from|import)\s+sqlalchemy\b", re.MULTILINE)


def _importers() -> set[str]:
    return {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if SQLALCHEMY_IMPORT.search(path.read_text(encoding="utf-8"))
    }


def test_only_storage_imports_sqlalchemy() -> None:
    outside = {p for p in _importers() if not p.startswith("storage/")}
    assert not outside, sorted(outside)
    # The check sees what it should: storage itself imports SQLAlchemy, tokens.py no longer.
    assert {"storage/db.py", "storage/tokens.py", "storage/repositories.py"} <= _importers()
    assert "tokens.py" not in outside and "web/public.py" not in outside


def test_the_migrations_ship_inside_storage() -> None:
    versions = sorted((PACKAGE / "storage" / "migrations" / "versions").glob("0*.py"))
    assert versions and not (PACKAGE / "migrations").exists()
