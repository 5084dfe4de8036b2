"""Shared fixtures: a real database (SQLite file or PostgreSQL schema) and a real CA per test.

PostgreSQL is the server at 127.0.0.1:5432 (override with CA_TEST_PG_URL); each test gets a schema
of its own, dropped afterwards. Outside CI an unreachable server skips the PostgreSQL half; in CI
(CI=true) it fails, since a silently skipped half is a hole in the suite.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import Actor, KeyType
from ca_service.wiring import build_authority

if TYPE_CHECKING:
    from .live import LiveServer

# Property tests: in CI the same examples every run (derandomized, no example database), so a
# red build is reproducible and a green one is not luck; locally they explore at random, and a
# failure found there is kept as an @example. HYPOTHESIS_PROFILE=ci reproduces CI locally.
hypothesis_settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)

PG_URL = os.environ.get("CA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSPHRASE = b"test-passphrase-not-secret"
ADMIN = Actor(identity="test:admin")

_pg_error: str | None = None
_pg_checked = False


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    global _pg_checked, _pg_error
    if not _pg_checked:
        _pg_checked = True
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 5})
            with engine.begin() as conn:
                conn.execute(sa.text("select 1"))
                _pin_pg_trgm(conn)
            engine.dispose()
        except Exception as exc:  # any driver error means "not available"
            _pg_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return _pg_error


def _pin_pg_trgm(conn: sa.Connection) -> None:
    """Keep pg_trgm in `public`, outside every per-test schema.

    Migration 0005 creates the extension in the first schema of the search path when it is
    missing: a test schema. Dropping that schema would then drop the extension under every other
    test (or test process) using it at the time.
    """
    where = conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'pg_trgm'"
        )
    ).scalar()
    if where is None:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public"))
    elif where != "public":
        conn.execute(sa.text("ALTER EXTENSION pg_trgm SET SCHEMA public"))


def require_postgres() -> None:
    error = _pg_available()
    if error is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI and is unreachable at {PG_URL}: {error}")
    pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {error}")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema of their own."""
    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ca.db'}"
    return str(request.getfixturevalue("pg_url"))


def make_settings(tmp_path: Path, db_url: str | None = None, **overrides: object) -> Settings:
    base = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        key_passphrase=PASSPHRASE,
        public_url="http://127.0.0.1:8000",
    )
    return base.with_overrides(**overrides) if overrides else base


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


def new_ca(settings: Settings, key_type: KeyType = KeyType.ECDSA_P256, **spec: object) -> Core:
    ca = build_authority(settings, apply_migrations=True)
    ca.create_hierarchy(HierarchySpec(key_type=key_type, **spec), ADMIN)  # type: ignore[arg-type]
    ca.load_keys()
    return ca


@pytest.fixture
def ca(settings: Settings) -> Iterator[Core]:
    authority = new_ca(settings)
    yield authority
    authority.db.dispose()


@pytest.fixture
def two_hierarchies(tmp_path: Path, db_url: str) -> Iterator[Core]:
    """A CA with the default hierarchy and a second one, "other" (root and issuing CA)."""
    authority = new_ca(make_settings(tmp_path, db_url))
    authority.create_hierarchy(HierarchySpec(name="other"), ADMIN)
    authority.load_keys()
    yield authority
    authority.db.dispose()


@pytest.fixture(scope="session")
def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the openssl CLI is required for the tests (apt-get install openssl)")
    return path


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload]


def make_pg_schema() -> tuple[str, str]:
    """Create a fresh schema; returns (url using it, schema name). Caller drops it."""
    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def table_names(url: str) -> list[str]:
    """The tables of the database (or PostgreSQL schema) at ``url``, SQLite's own left out."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
    finally:
        engine.dispose()
    return sorted(n for n in names if not n.startswith("sqlite_"))


@contextmanager
def database(backend: str, base: Path) -> Iterator[str]:
    """A URL for a fixture of any scope (``db_url`` is per test): a SQLite file in ``base``, or a
    PostgreSQL schema of its own, dropped on exit."""
    if backend == "sqlite":
        yield f"sqlite:///{base / 'ca.db'}"
        return
    url, schema = make_pg_schema()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``db_url`` for a CA or server that a whole module shares (one per backend)."""
    with database(request.param, tmp_path_factory.mktemp(f"db-{request.param}")) as url:
        yield url


@contextmanager
def live_server(backend: str, base: Path, *, workers: int = 2) -> Iterator[LiveServer]:
    """A real `ca-service serve` on loopback over a fresh SQLite file or PostgreSQL schema."""
    from .live import start_server

    with database(backend, base) as url:
        server = start_server(base / "data", url, workers=workers)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real `ca-service serve` (gunicorn, 2 workers) on loopback, per module and backend."""
    with live_server(request.param, tmp_path_factory.mktemp(f"live-{request.param}")) as server:
        yield server
