"""The pieces of `ca-service trust` that need no server: fingerprints, platforms, the record."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca_service.errors import BadRequest
from ca_service.trust.fetch import FingerprintMismatch, Root, load_root, parse_fingerprint
from ca_service.trust.manifest import Manifest, ManifestError
from ca_service.trust.stores import (
    MACOS_COMMAND,
    WINDOWS_COMMAND,
    JavaStore,
    SystemStore,
    discover_nss_dbs,
)

from ..live import CA_SERVICE


def _root(cn: str = "Acme Dev Root / 2026") -> Root:
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Root(cert)


def test_fingerprint_forms_are_all_accepted() -> None:
    digest = hashlib.sha256(b"x").digest()
    hexed = digest.hex()
    colons = ":".join(hexed[i : i + 2] for i in range(0, 64, 2))
    for text in (hexed, hexed.upper(), colons, colons.upper(), f"SHA256:{colons}", f" {hexed} "):
        assert parse_fingerprint(text) == digest, text


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "ab" * 31, "ab" * 33, "sha1:" + "ab" * 32])
def test_bad_fingerprints_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_fingerprint(text)


def test_root_file_is_checked_against_the_fingerprint(tmp_path: Path) -> None:
    root = _root()
    pem, der = tmp_path / "r.pem", tmp_path / "r.der"
    pem.write_text(root.pem)
    der.write_bytes(root.der)
    good = bytes.fromhex(root.sha256)
    assert load_root(pem, good).sha256 == root.sha256
    assert load_root(der, good).sha256 == root.sha256
    with pytest.raises(FingerprintMismatch):
        load_root(pem, hashlib.sha256(b"other").digest())
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(BadRequest):
        load_root(tmp_path / "junk")


def test_names_are_safe_for_files_and_nicknames() -> None:
    root = _root("Acme Dev Root / 2026")
    assert root.name == "acme-dev-root-2026"
    assert root.fp8 == root.sha256[:8]
    assert _root("//").name == "root"


@pytest.mark.parametrize(
    ("platform", "command"), [("darwin", MACOS_COMMAND), ("win32", WINDOWS_COMMAND)]
)
def test_other_systems_get_the_documented_command(
    platform: str, command: str, tmp_path: Path
) -> None:
    store = SystemStore(tmp_path, ["true"], platform=platform)
    outcome = store.install(_root(), dry_run=False)
    assert outcome.action == "skipped" and command in outcome.detail
    assert list(tmp_path.iterdir()) == []


def test_nss_discovery_finds_only_sql_databases(tmp_path: Path) -> None:
    chromium = tmp_path / ".pki" / "nssdb"
    profile = tmp_path / ".mozilla" / "firefox" / "x1.default-release"
    legacy = tmp_path / ".mozilla" / "firefox" / "x2.default"
    snap = tmp_path / "snap" / "firefox" / "common" / ".mozilla" / "firefox" / "y.default"
    for d in (chromium, profile, legacy, snap):
        d.mkdir(parents=True)
    for d in (chromium, profile, snap):
        (d / "cert9.db").write_bytes(b"")
    (legacy / "cert8.db").write_bytes(b"")  # the old dbm format: certutil sql: cannot use it
    assert discover_nss_dbs(tmp_path) == [chromium, profile, snap]
    assert discover_nss_dbs(tmp_path / "nobody") == []


def test_manifest_never_duplicates_and_survives_a_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d" / "trust.json"
    m = Manifest.load(path)
    entry = {"store": "nss", "location": "sql:/x", "nickname": "n", "sha256": "ab"}
    m.add(entry)
    m.add(dict(entry))
    m.save()
    again = Manifest.load(path)
    assert again.entries == [entry]
    again.discard(entry)
    again.save()
    assert json.loads(path.read_text())["entries"] == []


def test_a_corrupt_state_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    state = tmp_path / "trust.json"
    state.write_text('{"version": 1, "entries": [{"store": "system"}]}')
    with pytest.raises(ManifestError):
        Manifest.load(state)
    proc = subprocess.run(
        [CA_SERVICE, "trust", "uninstall", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"error: {state} is not a ca-service trust state file\n"
    assert state.read_text().startswith('{"version": 1')  # left as it was


def test_java_without_keytool_is_skipped_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no keytool
    assert JavaStore().install(_root(), dry_run=False).action == "skipped"
    explicit = JavaStore(tmp_path / "cacerts").install(_root(), dry_run=False)
    assert explicit.action == "refused" and "keytool" in explicit.detail


def test_the_root_pem_is_what_the_der_says() -> None:
    root = _root()
    loaded = x509.load_pem_x509_certificate(root.pem.encode())
    assert loaded.public_bytes(Encoding.DER) == root.der
