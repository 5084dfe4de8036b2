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


# Front ends reach the store only through the core (issue 10, item 1): reads go through
# Core.catalog (core/catalog.py), never a repository or a unit of work of their own.
FRONT_ENDS = ("web/", "ui/", "cli/", "tls/")
STORAGE_IMPORT = re.compile(r"^\s*(?:from|import)\s+ca_service\.storage(?:\.(\w+))?(.*)$", re.M)
# What the CLI may still take from storage: migrations (db upgrade, schema check) and the
# Database handle / StoreError it opens, closes and reports.
ALLOWED_STORAGE = {
    "cli/context.py": {"import migrate", "db import Database"},
    "cli/db.py": {"import migrate"},
    "cli/output.py": {"db import StoreError"},
}


def _storage_imports(path: Path) -> set[str]:
    found = set()
    for match in STORAGE_IMPORT.finditer(path.read_text(encoding="utf-8")):
        module, rest = match.group(1), match.group(2).strip()
        found.add(f"{module} {rest}" if module else rest)
    return found


def test_front_ends_read_the_store_only_through_the_core() -> None:
    seen = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name.startswith(FRONT_ENDS) and (imports := _storage_imports(path)):
            seen[name] = imports
    wrong = {n: i - ALLOWED_STORAGE.get(n, set()) for n, i in seen.items()}
    assert not {n: i for n, i in wrong.items() if i}, wrong
    for name in PACKAGE.rglob("*.py"):
        rel = name.relative_to(PACKAGE).as_posix()
        if rel.startswith(FRONT_ENDS):
            text = name.read_text(encoding="utf-8")
            assert "unit_of_work" not in text and "Repository(" not in text, rel
    # The check sees what it should: the CLI's allowed imports are there.
    assert seen.get("cli/db.py") == {"import migrate"}


PKCS11_IMPORT = re.compile(r"^\s*(?:from|import)\s+pkcs11\b", re.MULTILINE)


def test_only_the_signing_pkcs11_module_imports_the_pkcs11_binding() -> None:
    """Issue 16: the token binding stays behind the keystore; nothing above signing/ holds a
    session or a key handle."""
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if PKCS11_IMPORT.search(path.read_text(encoding="utf-8"))
    }
    assert importers == {"signing/pkcs11.py"}, sorted(importers)


FLASK_IMPORT = re.compile(r"^\s*(from|import)\s+(flask|werkzeug)\b", re.MULTILINE)


def test_nothing_below_the_web_layer_imports_flask() -> None:
    """ACME, OIDC, the client and the core are Flask-free: a view is only a translation. The two
    HTTP front ends, the JSON API (web/) and the admin UI (ui/), are the only Flask code."""
    outside = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if not path.relative_to(PACKAGE).as_posix().startswith(("web/", "ui/"))
        and FLASK_IMPORT.search(path.read_text(encoding="utf-8"))
    )
    assert outside == [], outside
    # The check sees what it should: the web layer itself imports Flask.
    assert FLASK_IMPORT.search((PACKAGE / "web" / "acme.py").read_text(encoding="utf-8"))
