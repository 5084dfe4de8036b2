"""Issue 14, item 1: no per-node key state. Replicas with a data directory each, on one database.

The reproduction: with a data directory per replica, OCSP failed on every replica but the one
that made the responder (``cannot read key file .../keys/<name>-ocsp-<id>.key.pem``), and a
replica with an empty data directory could not load the CA keys at all. Here two cores stand
for two replicas: separate data directories, one SQLite file or PostgreSQL schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.core.facade import Core
from ca_service.errors import ConfigError
from ca_service.wiring import build_authority

from ..conftest import ADMIN, PASSPHRASE, make_settings, new_ca
from ..helpers import (
    all_stored_bytes,
    cli_run,
    ocsp_answer,
    ocsp_request_for,
    secret_fragments,
    stored_keys,
)


def _leaf(ca: Core, name: str) -> x509.Certificate:
    issued = ca.issue_with_new_key(ADMIN, common_name=f"{name}.replica.example.test")
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def _responders(ca: Core) -> list[tuple[str, str]]:
    with ca.db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT serial, key_file FROM ocsp_responders ORDER BY id"))
        return [(str(s), str(k)) for s, k in rows]


def _key_files(ca: Core) -> list[str]:
    with ca.db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key_file FROM authorities ORDER BY id"))
        return [str(k) for (k,) in rows]


@pytest.fixture
def replicas(tmp_path: Path, db_url: str) -> Iterator[tuple[Core, Core]]:
    """Replica A made the CA; replica B started later with an empty data directory."""
    a = new_ca(make_settings(tmp_path / "a", db_url))
    b = build_authority(make_settings(tmp_path / "b", db_url))
    yield a, b
    a.db.dispose()
    b.db.dispose()


def test_every_replica_answers_ocsp_with_the_responder_another_made(
    replicas: tuple[Core, Core],
) -> None:
    a, b = replicas
    assert b.load_keys() == ["default-root", "default"]  # before: cannot read key file
    leaf = _leaf(a, "ocsp")
    issuer = a.authority_certificate()
    request = ocsp_request_for(leaf, issuer)
    status_a, signer_a = ocsp_answer(a.answer_ocsp(request).der)
    ((responder_serial, key_file),) = _responders(a)  # A made the responder
    assert key_file.startswith("db:")
    # B signs with the same responder, read from the database: no new one, no 503.
    status_b, signer_b = ocsp_answer(b.answer_ocsp(request).der)
    assert (status_a, status_b) == ("good", "good")
    assert signer_a == signer_b == int(responder_serial, 16)
    assert len(_responders(b)) == 1
    # And B issues and signs CRLs with the CA keys A made.
    assert _leaf(b, "from-b").issuer == leaf.issuer
    assert b.generate_crl("default").number > 0
    assert not (b.settings.data_dir / "keys").exists()


def _older_store(tmp_path: Path, db_url: str) -> Core:
    """A store as the previous release left it: CA and responder keys as files in A's data_dir."""
    old = new_ca(make_settings(tmp_path / "a", db_url, key_backend="file"))
    leaf = _leaf(old, "old")
    ocsp_answer(old.answer_ocsp(ocsp_request_for(leaf, old.authority_certificate())).der)
    assert not any(k.startswith("db:") for k in _key_files(old))
    assert len(list((old.settings.data_dir / "keys").iterdir())) == 3
    return old


def test_an_older_stores_key_files_are_imported_at_start_once(
    tmp_path: Path, db_url: str
) -> None:
    old = _older_store(tmp_path, db_url)
    files = {p.name: p.read_bytes() for p in (old.settings.data_dir / "keys").iterdir()}
    old.db.dispose()
    # Before the import, a replica with an empty data dir cannot load them, and says why.
    b_settings = make_settings(tmp_path / "b", db_url)
    early = build_authority(b_settings)
    with pytest.raises(ConfigError, match="keys import"):
        early.load_keys()
    early.db.dispose()

    # Replica A restarts with the new default backend: its files are copied in.
    a = build_authority(make_settings(tmp_path / "a", db_url))
    try:
        blobs = stored_keys(a.db)
        assert {f"{n}.key.pem": d for n, d in blobs.items()} == files  # the same bytes
        refs = _key_files(a) + [k for _, k in _responders(a)]
        assert sorted(refs) == sorted(f"db:{n}" for n in blobs)
        stored = all_stored_bytes(a.db)
        for data in blobs.values():  # encrypted, never in clear anywhere in the store
            key = serialization.load_pem_private_key(data, password=PASSPHRASE)
            assert not any(f in stored for f in secret_fragments(key))
    finally:
        a.db.dispose()

    # Idempotent: a second start or `keys import` finds nothing left to do.
    again = cli_run(make_settings(tmp_path / "a", db_url), ["keys", "import"])
    assert again.exit_code == 0, again.output
    assert "imported 0 key(s)" in again.output
    # Replica B, empty data dir, now loads every key and answers OCSP with the old responder.
    b = build_authority(b_settings)
    try:
        assert b.load_keys() == ["default-root", "default"]
        leaf = _leaf(b, "new")
        status, signer = ocsp_answer(b.answer_ocsp(ocsp_request_for(leaf, leaf_issuer(b))).der)
        assert status == "good"
        ((serial, _),) = _responders(b)
        assert signer == int(serial, 16)
    finally:
        b.db.dispose()


def leaf_issuer(ca: Core) -> x509.Certificate:
    return ca.authority_certificate("default")


def test_keys_import_on_a_node_without_the_files_names_what_is_missing(
    tmp_path: Path, db_url: str
) -> None:
    _older_store(tmp_path, db_url).db.dispose()
    result = cli_run(make_settings(tmp_path / "b", db_url), ["keys", "import"])
    assert result.exit_code == 0, result.output
    assert "imported 0 key(s)" in result.output
    assert result.output.count("not on this node") == 3
    assert "PRIVATE KEY" not in result.output
    refused = cli_run(
        make_settings(tmp_path / "b", db_url), ["keys", "import"], CA_KEY_BACKEND="file"
    )
    assert refused.exit_code == 3 and "key_backend = database" in refused.output


def test_an_imported_file_that_differs_from_the_stored_key_is_refused(
    tmp_path: Path, db_url: str
) -> None:
    """Nothing half-written: a key file whose name is taken by another stored key stops the
    import, and every row still names its file."""
    old = _older_store(tmp_path, db_url)
    name = _key_files(old)[0].removesuffix(".key.pem")
    with old.db.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO key_blobs (name, pem_encrypted, created_at) VALUES (:n, :d, :t)"),
            {"n": name, "d": b"another key", "t": old.clock.now()},
        )
    before = _key_files(old)
    old.db.dispose()
    with pytest.raises(ConfigError, match="differs from the key stored"):
        build_authority(make_settings(tmp_path / "a", db_url))
    a = build_authority(make_settings(tmp_path / "a", db_url, key_backend="file"))
    try:
        assert _key_files(a) == before
    finally:
        a.db.dispose()
