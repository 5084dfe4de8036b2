"""`ca-service request` end to end: the real command, as a subprocess, against a real
`ca-service serve --tls` on loopback (SQLite and PostgreSQL), with an API token.

The OIDC half (GitHub Actions token endpoint simulated on loopback) is test_request_oidc.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ..conftest import run
from ..live import LiveServer, create_token, free_port, start_server
from .helpers import request

NAME = "app.client.test"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("client") / "data", module_db_url, tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def issuer(live: LiveServer) -> str:
    """An issuer token held to *.client.test, as a pipeline would get."""
    return create_token(live, "issuer", name="pipeline", allowed_names=["*.client.test"])[0]


def fingerprint(live: LiveServer, sep: str = ":") -> str:
    assert live.root_pem is not None
    cert = x509.load_pem_x509_certificate(live.root_pem.encode())
    return sep.join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def first(
    live: LiveServer, out: Path, *extra: str, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return request(
        "--server",
        live.base_url,
        "--name",
        NAME,
        "--out",
        str(out),
        "--root-fingerprint",
        fingerprint(live),
        *extra,
        **kwargs,  # type: ignore[arg-type]
    )


def stats(paths: list[Path]) -> list[tuple[int, int]]:
    return [(p.stat().st_ino, p.stat().st_mtime_ns) for p in paths]


PEM_FILES = ("key", "crt", "chain.pem", "fullchain.pem")


@pytest.mark.slow
def test_token_issue_then_nothing_to_do_then_renew(
    live: LiveServer, issuer: str, tmp_path: Path, openssl: str
) -> None:
    out = tmp_path / "tls" / "app"
    result = first(live, out, token=issuer)
    assert result.returncode == 0, result.stderr
    assert "issued certificate" in result.stdout
    assert "requesting a certificate for app.client.test" in result.stderr
    paths = [out.with_name(f"app.{s}") for s in PEM_FILES]
    key, crt, chain, full = paths
    assert key.stat().st_mode & 0o777 == 0o600
    for p in (crt, chain, full):
        assert p.stat().st_mode & 0o077 in (0o044, 0o004, 0o040, 0o000)
    root = out.with_name("app.root.pem")
    assert root.read_text() == live.root_pem
    verify = run([openssl, "verify", "-CAfile", str(root), "-untrusted", str(chain), str(crt)])
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert private.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)
    assert full.read_bytes() == crt.read_bytes() + chain.read_bytes()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    first_serial = format(cert.serial_number, "x")

    # Again: the root file is trust now (no fingerprint needed), and nothing changes.
    before = stats(paths)
    again = request("--server", live.base_url, "--name", NAME, "--out", str(out), token=issuer)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and first_serial in again.stdout
    assert stats(paths) == before

    # Renewal: forced by --renew-within 1; new key, new serial, every file replaced.
    renewed = request(
        "--server",
        live.base_url,
        "--name",
        NAME,
        "--out",
        str(out),
        "--renew-within",
        "1",
        token=issuer,
    )
    assert renewed.returncode == 0, renewed.stderr
    assert f"renewed {first_serial} as" in renewed.stdout
    new = x509.load_pem_x509_certificate(crt.read_bytes())
    assert new.serial_number != cert.serial_number
    assert new.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki)
    new_key = serialization.load_pem_private_key(key.read_bytes(), None)
    assert new_key.public_key().public_bytes(der, spki) == new.public_key().public_bytes(der, spki)
    assert all(a[0] != b[0] for a, b in zip(stats(paths), before, strict=True))
    assert key.stat().st_mode & 0o777 == 0o600
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    # Through the renew endpoint: the store links the old record to its successor.
    old = live.request("GET", f"/api/v1/certificates/{first_serial}", token=live.admin_token)
    assert old.json["successor"] == format(new.serial_number, "x")


def test_json_output(live: LiveServer, issuer: str, tmp_path: Path) -> None:
    out = tmp_path / "j"
    result = first(live, out, "--json", token=issuer)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["ok"] is True and record["action"] == "issued"
    cert = x509.load_pem_x509_certificate(Path(record["files"]["certificate"]).read_bytes())
    assert record["serial"] == format(cert.serial_number, "x")
    assert record["not_after"].startswith(cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M"))
    assert set(record["files"]) == {"key", "certificate", "chain", "fullchain"}
    assert record["root_fetched"] is True
    assert "requesting" not in result.stderr  # --json is quiet
    again = json.loads(
        request(
            "--server", live.base_url, "--name", NAME, "--out", str(out), "--json", token=issuer
        ).stdout
    )
    assert again["action"] == "unchanged" and again["serial"] == record["serial"]


def test_wrong_root_fingerprint_is_refused_and_nothing_written(
    live: LiveServer, issuer: str, tmp_path: Path
) -> None:
    out = tmp_path / "w" / "app"
    wrong = "ab" * 32
    result = request(
        "--server",
        live.base_url,
        "--name",
        NAME,
        "--out",
        str(out),
        "--root-fingerprint",
        wrong,
        token=issuer,
    )
    assert result.returncode == 3, result.stderr
    assert "fingerprint" in result.stderr and fingerprint(live) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_fingerprint_any_case_without_colons(live: LiveServer, issuer: str, tmp_path: Path) -> None:
    root = tmp_path / "trust" / "root.pem"
    result = request(
        "--server",
        live.base_url,
        "--name",
        NAME,
        "--out",
        str(tmp_path / "x"),
        "--root-fingerprint",
        fingerprint(live, "").lower(),
        "--root",
        str(root),
        token=issuer,
    )
    assert result.returncode == 0, result.stderr
    assert root.read_text() == live.root_pem
    assert not (tmp_path / "x.root.pem").exists()


def test_no_trust_is_a_usage_error(live: LiveServer, issuer: str, tmp_path: Path) -> None:
    result = request(
        "--server", live.base_url, "--name", NAME, "--out", str(tmp_path / "n"), token=issuer
    )
    assert result.returncode == 2, result.stderr
    assert "--root-fingerprint" in result.stderr


def test_p12(live: LiveServer, issuer: str, tmp_path: Path, openssl: str) -> None:
    out = tmp_path / "p"
    env = {"CA_P12_PASSPHRASE": "correct horse"}
    result = first(live, out, "--format", "p12", token=issuer, env=env)
    assert result.returncode == 0, result.stderr
    p12 = tmp_path / "p.p12"
    assert p12.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "p.key").exists()
    read = run(
        [openssl, "pkcs12", "-in", str(p12), "-passin", "env:P12", "-nodes"],
        env={**os.environ, "P12": "correct horse"},
    )
    assert read.returncode == 0, read.stderr
    assert "PRIVATE KEY" in read.stdout and read.stdout.count("BEGIN CERTIFICATE") >= 2
    bad = run(
        [openssl, "pkcs12", "-in", str(p12), "-passin", "pass:wrong", "-nodes"],
    )
    assert bad.returncode != 0
    key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), b"correct horse")
    assert key is not None and cert is not None
    again = request(
        "--server",
        live.base_url,
        "--name",
        NAME,
        "--out",
        str(out),
        "--format",
        "p12",
        token=issuer,
        env=env,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    no_pass = request(
        "--server",
        live.base_url,
        "--name",
        NAME,
        "--out",
        str(out),
        "--format",
        "p12",
        token=issuer,
    )
    assert no_pass.returncode == 2 and "passphrase" in no_pass.stderr


def test_refused_name_exits_1_with_the_rule(live: LiveServer, issuer: str, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = request(
        "--server",
        live.base_url,
        "--name",
        "elsewhere.test",
        "--out",
        str(out),
        "--root-fingerprint",
        fingerprint(live),
        token=issuer,
    )
    assert result.returncode == 1, result.stderr
    assert "caller.allowed_names" in result.stderr and "403" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not any((tmp_path / f"r.{s}").exists() for s in PEM_FILES)


def test_bad_token_exits_1(live: LiveServer, tmp_path: Path) -> None:
    result = first(live, tmp_path / "t", token="cas_0000000000000000_" + "A" * 43)
    assert result.returncode == 1, result.stderr
    assert "401" in result.stderr


def test_token_on_the_command_line_is_warned_about(
    live: LiveServer, issuer: str, tmp_path: Path
) -> None:
    result = first(live, tmp_path / "a", "--token", issuer)
    assert result.returncode == 0, result.stderr
    assert "warning: --token is visible" in result.stderr
    assert issuer not in result.stderr + result.stdout


def test_server_down_exits_3(live: LiveServer, issuer: str, tmp_path: Path) -> None:
    assert live.root_pem is not None
    (tmp_path / "d.root.pem").write_text(live.root_pem)
    result = request(
        "--server",
        f"https://127.0.0.1:{free_port()}",
        "--name",
        NAME,
        "--out",
        str(tmp_path / "d"),
        "--retries",
        "0",
        token=issuer,
    )
    assert result.returncode == 3, result.stderr
    assert "cannot reach" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--renew-within", "2"), "between 0 and 1"),
        (("--renew-within", "soon"), "fraction"),
        (("--name", "bad..name"), "--name"),
        (("--key-type", "dsa"), "--key-type"),
    ],
)
def test_bad_usage_exits_2(
    live: LiveServer, issuer: str, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = first(live, tmp_path / "u", *args, token=issuer)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not list(tmp_path.iterdir())


def test_plain_http_server_url_is_a_usage_error(issuer: str, tmp_path: Path) -> None:
    result = request(
        "--server",
        "http://127.0.0.1:1",
        "--name",
        NAME,
        "--out",
        str(tmp_path / "h"),
        token=issuer,
    )
    assert result.returncode == 2 and "https://" in result.stderr


def test_no_credential_is_a_usage_error(live: LiveServer, tmp_path: Path) -> None:
    result = first(live, tmp_path / "c")
    assert result.returncode == 2 and "CA_TOKEN" in result.stderr
