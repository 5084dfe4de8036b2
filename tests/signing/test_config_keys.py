"""Issue item 2: CA keys at rest (encrypted PKCS#8, mode 0600, never in the DB or output) and the
passphrase settings, with clear errors when it is wrong or missing."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.config import Settings, load_settings
from ca_service.core.facade import Core
from ca_service.crypto.keys import public_key_matches
from ca_service.errors import ConfigError
from ca_service.wiring import build_authority

from ..conftest import ADMIN, PASSPHRASE, make_settings, new_ca
from ..helpers import (
    all_stored_bytes,
    assert_encrypted_keys,
    cli_run,
    ocsp_request_for,
    one_error_line,
    secret_fragments,
    stored_keys,
    tree_bytes,
)


def _key_files(ca: Core) -> list[Path]:
    return sorted((ca.settings.data_dir / "keys").iterdir())


@pytest.fixture
def file_ca(settings: Settings) -> Iterator[Core]:
    """A CA with ``key_backend = "file"``: its keys are files in data_dir/keys."""
    authority = new_ca(settings.with_overrides(key_backend="file"))
    yield authority
    authority.db.dispose()


def _assert_encrypted_pkcs8(data: bytes) -> None:
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(data, password=b"wrong")


def test_ca_keys_are_encrypted_pkcs8_in_the_database(ca: Core) -> None:
    """The default backend (issue 14): the same encrypted PKCS#8 a key file holds, in the
    database, named by each authority's ``db:`` reference; no key file anywhere."""
    assert not (ca.settings.data_dir / "keys").exists()
    keys = stored_keys(ca.db)
    assert len(keys) == 2  # root and intermediate
    for data in keys.values():
        _assert_encrypted_pkcs8(data)
    for authority in ca.list_authorities():
        assert authority.key_file.startswith("db:")
        data = keys[authority.key_file.removeprefix("db:")]
        key = serialization.load_pem_private_key(data, password=PASSPHRASE)
        cert = x509.load_der_x509_certificate(authority.cert_der)
        assert public_key_matches(key, cert.public_key())  # type: ignore[arg-type]


def test_ca_keys_are_encrypted_pkcs8_files_mode_0600(file_ca: Core) -> None:
    ca = file_ca
    keys_dir = ca.settings.data_dir / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    files = _key_files(ca)
    assert len(files) == 2  # root and intermediate
    assert stored_keys(ca.db) == {}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        _assert_encrypted_pkcs8(path.read_bytes())
    for authority in ca.list_authorities():
        key_path = keys_dir / authority.key_file
        assert key_path in files
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=PASSPHRASE)
        cert = x509.load_der_x509_certificate(authority.cert_der)
        assert public_key_matches(key, cert.public_key())  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["database", "file"])
def test_ca_keys_never_in_the_database_in_clear(settings: Settings, backend: str) -> None:
    ca = new_ca(settings.with_overrides(key_backend=backend, ocsp_sign_with_ca=False))
    try:
        ca.issue_with_new_key(ADMIN, common_name="x.example.test")
        _make_responder(ca)  # an OCSP responder key too
        stored = all_stored_bytes(ca.db)
        on_disk = tree_bytes(ca.settings.data_dir)
        assert ADMIN.identity.encode() in stored  # the search sees the stored rows
        blobs = (
            list(stored_keys(ca.db).values())
            if backend == "database"
            else [p.read_bytes() for p in _key_files(ca)]
        )
        assert len(blobs) == 3
        for data in blobs:
            key = serialization.load_pem_private_key(data, password=PASSPHRASE)
            for fragment in secret_fragments(key):
                assert fragment not in stored
                assert fragment not in on_disk
        assert PASSPHRASE not in stored and PASSPHRASE not in on_disk
    finally:
        ca.db.dispose()


def _make_responder(ca: Core) -> None:
    """Have the CA answer one OCSP request, which makes its delegated responder."""
    issued = ca.issue_with_new_key(ADMIN, common_name="ocsp.example.test")
    cert = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
    answer = ca.answer_ocsp(ocsp_request_for(cert, ca.authority_certificate()))
    assert answer.cacheable


def _load_fails(settings: Settings, match: str) -> ConfigError:
    """Open the CA afresh (as a restarted service) and expect loading its keys to stop it."""
    fresh = build_authority(settings)
    try:
        with pytest.raises(ConfigError, match=match) as info:
            fresh.load_keys()
    finally:
        fresh.db.dispose()
    return info.value


@pytest.mark.parametrize("backend", ["database", "file"])
def test_wrong_passphrase_stops_with_a_clear_message(settings: Settings, backend: str) -> None:
    ca = new_ca(settings.with_overrides(key_backend=backend))
    ca.db.dispose()
    wrong = ca.settings.with_overrides(key_passphrase=b"not-the-passphrase")
    assert "not-the-passphrase" not in str(_load_fails(wrong, "cannot decrypt the CA key"))


def test_missing_passphrase_stops_at_start(ca: Core) -> None:
    with pytest.raises(ConfigError, match="CA_KEY_PASSPHRASE"):
        build_authority(ca.settings.with_overrides(key_passphrase=None))


def test_key_file_readable_by_others_is_refused(file_ca: Core) -> None:
    path = _key_files(file_ca)[0]
    os.chmod(path, 0o644)
    _load_fails(file_ca.settings, "readable by others")


def _clear_pem(data: bytes) -> bytes:
    key = serialization.load_pem_private_key(data, password=PASSPHRASE)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_unencrypted_key_file_is_refused(file_ca: Core) -> None:
    path = _key_files(file_ca)[0]
    path.write_bytes(_clear_pem(path.read_bytes()))
    _load_fails(file_ca.settings, "not encrypted")


def test_unencrypted_key_in_the_database_is_refused(ca: Core) -> None:
    """A clear key written into the table by hand is refused, as a clear key file is."""
    name, data = next(iter(stored_keys(ca.db).items()))
    with ca.db.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE key_blobs SET pem_encrypted = :d WHERE name = :n"),
            {"d": _clear_pem(data), "n": name},
        )
    _load_fails(ca.settings, "not encrypted")


def test_a_backend_that_does_not_hold_the_key_names_the_setting(
    ca: Core, settings: Settings
) -> None:
    """Keys in the database and key_backend = file: one line that names the fix."""
    error = _load_fails(ca.settings.with_overrides(key_backend="file"), "in the database")
    assert "key_backend = database" in str(error)


# ---------------------------------------------------------------------------- settings


def test_passphrase_from_env_or_file(tmp_path: Path) -> None:
    assert load_settings({"CA_KEY_PASSPHRASE": "pp"}).key_passphrase == b"pp"
    secret = tmp_path / "pass"
    secret.write_text("from-file\n")
    settings = load_settings({"CA_KEY_PASSPHRASE_FILE": str(secret)})
    assert settings.key_passphrase == b"from-file"
    assert "from-file" not in repr(settings)
    assert load_settings({}).key_passphrase is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CA_KEY_PASSPHRASE": "a", "CA_KEY_PASSPHRASE_FILE": "/x"}, "only one"),
        ({"CA_KEY_PASSPHRASE_FILE": "/nonexistent/pass"}, "cannot read"),
        ({"CA_KEY_PASSPHRASE_FILE": "EMPTY"}, "is empty"),
        ({"CA_KEY_PASSPRASE": "typo"}, "unknown setting CA_KEY_PASSPRASE"),
        ({"CA_PUBLIC_URL": "ftp://x"}, "public_url"),
        ({"CA_CRL_NEXT_UPDATE_HOURS": "0"}, "crl_next_update_hours"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path: Path, env: dict[str, str], message: str) -> None:
    if env.get("CA_KEY_PASSPHRASE_FILE") == "EMPTY":
        (tmp_path / "empty").write_text("\n")
        env = {"CA_KEY_PASSPHRASE_FILE": str(tmp_path / "empty")}
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_secrets_are_refused_in_the_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "ca.toml"
    config.write_text('key_passphrase = "in-a-file"\n')
    with pytest.raises(ConfigError, match="secrets belong in the environment"):
        load_settings({"CA_CONFIG_FILE": str(config)})


# ---------------------------------------------------------------------------- through the CLI


def test_cli_wrong_or_missing_passphrase_exit_3(ca: Core) -> None:
    for env in ({"CA_KEY_PASSPHRASE": "wrong-pass-XYZ"}, {"CA_KEY_PASSPHRASE": None}):
        for args in (["issue", "--cn", "a.example.test"], ["crl"], ["init", "--name", "second"]):
            result = cli_run(ca.settings, args, **env)
            assert result.exit_code == 3, (args, result.output)
            assert "passphrase" in one_error_line(result)
            assert "wrong-pass-XYZ" not in result.output
    # A failed init with the wrong passphrase adds nothing: no authority, no key.
    assert [a.name for a in ca.list_authorities()] == ["default-root", "default"]
    assert len(stored_keys(ca.db)) == 2


def test_cli_init_never_prints_key_material(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    result = cli_run(settings, ["init"])
    assert result.exit_code == 0, result.output
    assert "PRIVATE KEY" not in result.output
    assert PASSPHRASE.decode() not in result.output
    assert_encrypted_keys(settings, 2)
