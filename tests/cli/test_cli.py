"""Issue items 1 and 8 (and 9 at the CLI): init, issue, list, show, revoke, crl, db upgrade, export,
and errors that are one line on stderr with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ca_service.config import Settings
from ca_service.domain import KeyType
from ca_service.storage.db import Database

from ..conftest import make_settings, run
from ..helpers import (
    BIN,
    assert_encrypted_keys,
    cli_env,
    cli_run,
    count_rows,
    counts,
    csr_der,
    csr_pem,
    make_key,
    one_error_line,
    openssl_verify,
    stored_keys,
    tamper_signature,
    write,
)


def ok(settings: Settings, *args: str, **env: str | None) -> str:
    result = cli_run(settings, list(args), **env)
    assert result.exit_code == 0, result.output
    return result.stdout


def pem_certs(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def _bc(cert: x509.Certificate) -> x509.BasicConstraints:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value


@pytest.fixture
def inited(settings: Settings) -> Settings:
    ok(settings, "init")
    return settings


# ---------------------------------------------------------------------------- init (item 1)


def test_init_creates_root_intermediate_and_database(settings: Settings) -> None:
    out = ok(settings, "init")
    assert "default (default): issuing CA, ecdsa-p256" in out
    assert "default-root: root CA, ecdsa-p256" in out
    data = settings.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert not (data / "keys").exists()  # the keys are in the database (issue 14)
    db = Database(settings.resolved_database_url)
    try:
        assert len(stored_keys(db)) == 2
        assert count_rows(db, "alembic_version") == 1
        assert count_rows(db, "authorities") == 2
        assert count_rows(db, "crls") == 1  # the first CRL is signed at init
    finally:
        db.dispose()
    root = pem_certs(ok(settings, "export", "root"))[0]
    inter, root_again = pem_certs(ok(settings, "export", "chain"))
    assert root == root_again and root.issuer == root.subject
    assert _bc(root).ca and _bc(root).path_length == 1
    assert _bc(inter).ca and _bc(inter).path_length == 0 and inter.issuer == root.subject
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days in (3650, 3651)
    assert (inter.not_valid_after_utc - inter.not_valid_before_utc).days in (1825, 1826)
    authorities = json.loads(ok(settings, "authorities", "--json"))
    assert [(a["name"], a["is_root"], a["is_default"]) for a in authorities] == [
        ("default-root", True, False),
        ("default", False, True),
    ]


def test_init_options_subject_validity_constraints(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    ok(
        settings,
        "init",
        "--root-subject",
        "CN=Acme Root,O=Acme",
        "--subject",
        "CN=Acme Issuing,O=Acme",
        "--root-days",
        "400",
        "--intermediate-days",
        "200",
        "--permit",
        "example.test",
        "--permit",
        "10.0.0.0/8",
        "--exclude",
        "secret.example.test",
    )
    inter, root = pem_certs(ok(settings, "export", "chain"))
    assert root.subject == x509.Name.from_rfc4514_string("CN=Acme Root,O=Acme")
    assert inter.subject == x509.Name.from_rfc4514_string("CN=Acme Issuing,O=Acme")
    assert (root.not_valid_after_utc - root.not_valid_before_utc).days in (400, 401)
    assert (inter.not_valid_after_utc - inter.not_valid_before_utc).days in (200, 201)
    nc = inter.extensions.get_extension_for_class(x509.NameConstraints).value
    assert nc.permitted_subtrees is not None
    assert x509.DNSName("example.test") in nc.permitted_subtrees
    assert nc.excluded_subtrees == [x509.DNSName("secret.example.test")]
    refused = cli_run(settings, ["issue", "--cn", "x.secret.example.test", "--out", "x"])
    assert "authority.name_constraints" in one_error_line(refused)
    refused = cli_run(settings, ["issue", "--cn", "www.example.org", "--out", "x"])
    assert "authority.name_constraints" in one_error_line(refused)


@pytest.mark.parametrize("key_type", [k.value for k in KeyType])
def test_init_every_key_type_and_issue(tmp_path: Path, key_type: str, openssl: str) -> None:
    settings = make_settings(tmp_path)
    ok(settings, "init", "--key-type", key_type)
    inter, root = pem_certs(ok(settings, "export", "chain"))
    assert inter.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = json.loads(ok(settings, "authorities", "--json"))
    assert {a["key_type"] for a in info} == {key_type}
    out = tmp_path / "leaf"
    ok(settings, "issue", "--cn", "leaf.example.test", "--key-type", key_type, "--out", str(out))
    rc, text = openssl_verify(
        openssl,
        write(tmp_path / "root.pem", ok(settings, "export", "root")),
        tmp_path / "leaf.crt",
        tmp_path / "leaf.chain.pem",
    )
    assert rc == 0, text


def test_several_named_authorities_one_default(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    ok(settings, "init", "--name", "alpha")
    ok(settings, "init", "--name", "beta", "--key-type", "ed25519")
    names = {a["name"]: a for a in json.loads(ok(settings, "authorities", "--json"))}
    assert set(names) == {"alpha", "alpha-root", "beta", "beta-root"}
    assert [n for n, a in names.items() if a["is_default"]] == ["alpha"]
    issued = json.loads(
        ok(
            settings,
            "issue",
            "--cn",
            "b.example.test",
            "--authority",
            "beta",
            "--out",
            str(tmp_path / "b"),
            "--json",
        )
    )
    assert issued["authority"] == "beta"
    default = json.loads(
        ok(settings, "issue", "--cn", "a.example.test", "--out", str(tmp_path / "a"), "--json")
    )
    assert default["authority"] == "alpha"
    ok(settings, "set-default", "beta")
    names = {a["name"]: a for a in json.loads(ok(settings, "authorities", "--json"))}
    assert [n for n, a in names.items() if a["is_default"]] == ["beta"]
    assert "root" in one_error_line(cli_run(settings, ["set-default", "alpha-root"]))


def test_init_twice_never_overwrites(inited: Settings) -> None:
    db = Database(inited.resolved_database_url)
    before = stored_keys(db)
    chain = ok(inited, "export", "chain")
    again = cli_run(inited, ["init"])
    assert again.exit_code == 3
    assert "exists already" in one_error_line(again)
    again = cli_run(inited, ["init", "--key-type", "rsa-2048"])
    assert again.exit_code == 3
    assert "exists already" in ok(inited, "init", "--exist-ok")
    after = stored_keys(db)
    db.dispose()
    assert after == before and len(after) == 2
    assert ok(inited, "export", "chain") == chain


def test_init_imports_an_existing_ca(tmp_path: Path, openssl: str) -> None:
    key, cert = tmp_path / "ext.key", tmp_path / "ext.pem"
    made = run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", "/CN=External Root",
         "-passout", "pass:import-pass",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    settings = make_settings(tmp_path)
    passfile = write(tmp_path / "import-pass", "import-pass\n")
    missing_pass = cli_run(settings, ["init", "--import-cert", str(cert), "--import-key", str(key)])
    assert missing_pass.exit_code == 3 and "private key" in one_error_line(missing_pass)
    out = ok(settings, "init", "--import-cert", str(cert), "--import-key", str(key),
             "--import-key-passphrase-file", str(passfile))  # fmt: skip
    assert "default-root: root CA" in out
    root = pem_certs(ok(settings, "export", "root"))[0]
    assert root == x509.load_pem_x509_certificate(cert.read_bytes())
    ok(settings, "issue", "--cn", "imp.example.test", "--out", str(tmp_path / "imp"))
    rc, text = openssl_verify(openssl, cert, tmp_path / "imp.crt", tmp_path / "imp.chain.pem")
    assert rc == 0, text
    # The imported key is now kept encrypted under the service passphrase.
    assert_encrypted_keys(settings, 2)
    mismatch = cli_run(
        settings,
        ["init", "--name", "other", "--import-cert", str(cert), "--import-key",
         str(write(tmp_path / "k2.pem", _pem_key()))],
    )  # fmt: skip
    assert mismatch.exit_code == 1 and "does not belong" in one_error_line(mismatch)


def _pem_key() -> bytes:
    return make_key("p256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------- issue and friends (item 8)


def test_issue_generated_key_writes_files(inited: Settings, tmp_path: Path) -> None:
    p12pass = write(tmp_path / "p12pass", "p12-secret\n")
    out = tmp_path / "out" / "svc"
    text = ok(inited, "issue", "--cn", "svc.example.test", "--san", "10.0.0.5", "--san",
              "dns:api.example.test", "--key-type", "rsa-2048", "--profile", "peer",
              "--days", "30", "--out", str(out), "--p12-passphrase-file", str(p12pass))  # fmt: skip
    assert "issued" in text and "PRIVATE KEY" not in text
    files = {p.name: p for p in out.parent.iterdir()}
    assert set(files) == {
        "svc.crt", "svc.chain.pem", "svc.fullchain.pem", "svc.root.pem", "svc.key", "svc.p12"
    }  # fmt: skip
    assert stat.S_IMODE(files["svc.key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["svc.p12"].stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(files["svc.crt"].read_bytes())
    key = serialization.load_pem_private_key(files["svc.key"].read_bytes(), password=None)
    assert key.public_key() == cert.public_key()
    # As certbot writes them: chain = the intermediate only, fullchain = leaf + chain, and the
    # root in a file of its own.
    inter, root = pem_certs(ok(inited, "export", "chain"))
    assert pem_certs(files["svc.chain.pem"].read_text()) == [inter]
    assert pem_certs(files["svc.fullchain.pem"].read_text()) == [cert, inter]
    assert pem_certs(files["svc.root.pem"].read_text()) == [root]
    _, p12_cert, _ = pkcs12.load_key_and_certificates(files["svc.p12"].read_bytes(), b"p12-secret")
    assert p12_cert == cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.example.test", "api.example.test"]
    # Not overwriting: a second run to the same prefix fails after issuing, and says so.
    again = cli_run(inited, ["issue", "--cn", "svc.example.test", "--out", str(out)])
    assert "exists; not overwriting" in one_error_line(again)


@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_issue_from_csr(inited: Settings, tmp_path: Path, encoding: str) -> None:
    key = make_key("p256")
    data = (
        csr_pem(key, "csr.example.test") if encoding == "pem" else csr_der(key, "csr.example.test")
    )
    csr = write(tmp_path / f"req.{encoding}", data)
    record = json.loads(ok(inited, "issue", "--csr", str(csr), "--san", "10.1.1.1", "--profile",
                           "server", "--out", str(tmp_path / "c"), "--json"))  # fmt: skip
    assert record["sans"] == ["dns:csr.example.test", "ip:10.1.1.1"]
    assert record["status"] == "valid" and record["profile"] == "server"
    assert not (tmp_path / "c.key").exists()
    cert = x509.load_pem_x509_certificate((tmp_path / "c.crt").read_bytes())
    assert cert.public_key() == key.public_key()


def test_list_show_revoke_release(inited: Settings, tmp_path: Path) -> None:
    def issue(cn: str, *extra: str) -> str:
        out = str(tmp_path / cn)
        return json.loads(ok(inited, "issue", "--cn", cn, "--out", out, "--json", *extra))["serial"]

    a = issue("alpha.example.test", "--days", "5")
    b = issue("beta.example.test")
    c = issue("gamma.example.test")
    assert "revoked (keyCompromise)" in ok(inited, "revoke", b, "--reason", "keyCompromise")
    ok(inited, "revoke", c, "--reason", "certificateHold")

    def listed(*args: str) -> list[str]:
        rows = json.loads(ok(inited, "list", "--json", *args))
        return [r["serial"] for r in rows if r["profile"] != "ca"]

    assert listed() == [c, b, a]
    # Listing reads through the core's catalog only: it needs no CA key passphrase.
    bare = cli_run(inited, ["list", "--json"], CA_KEY_PASSPHRASE=None)
    assert bare.exit_code == 0, bare.output
    assert [r["serial"] for r in json.loads(bare.output) if r["profile"] != "ca"] == [c, b, a]
    assert listed("--status", "revoked") == [c, b]
    assert listed("--status", "valid") == [a]
    assert listed("--name", "beta") == [b]
    assert listed("--expiring-within", "10") == [a]
    assert listed("--name", "nothing-like-this") == []
    table = ok(inited, "list")
    assert table.splitlines()[0].split() == ["SERIAL", "AUTHORITY", "STATUS", "NOT", "AFTER",
                                             "PROFILE", "NAMES"]  # fmt: skip
    assert any("beta.example.test" in line and "revoked" in line for line in table.splitlines())
    assert "no certificates match" in ok(inited, "list", "--name", "zzz")

    shown = json.loads(ok(inited, "show", b, "--json"))
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "keyCompromise"
    colon = ":".join(b[i : i + 2] for i in range(0, len(b), 2)).upper()
    assert json.loads(ok(inited, "show", colon, "--json"))["serial"] == b
    pem = ok(inited, "show", a, "--pem")
    assert format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x") == a
    assert "status" in ok(inited, "show", a)

    assert "released" in ok(inited, "release-hold", c)
    assert listed("--status", "revoked") == [b]
    conflict = cli_run(inited, ["revoke", b, "--reason", "superseded"])
    assert conflict.exit_code == 1 and "already revoked" in one_error_line(conflict)


def test_crl_pem_and_der(inited: Settings, tmp_path: Path) -> None:
    serial = json.loads(ok(inited, "issue", "--cn", "r.example.test", "--out",
                           str(tmp_path / "r"), "--json"))["serial"]  # fmt: skip
    ok(inited, "revoke", serial)
    pem = ok(inited, "crl")
    crl = x509.load_pem_x509_crl(pem.encode())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    out = tmp_path / "crl.der"
    result = cli_run(inited, ["crl", "--format", "der", "--out", str(out)])
    assert result.exit_code == 0 and "written to" in result.stderr
    der = x509.load_der_x509_crl(out.read_bytes())
    number = der.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert "pass --out" in one_error_line(cli_run(inited, ["crl", "--format", "der"]))


def test_db_upgrade(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url)
    behind = cli_run(settings, ["list"])
    assert behind.exit_code == 3 and "db upgrade" in one_error_line(behind)
    assert "applied" in ok(settings, "db", "upgrade")
    assert ok(settings, "db", "upgrade").strip() == "schema is current"
    assert "no certificates match" in ok(settings, "list")


def test_export_to_file(inited: Settings, tmp_path: Path) -> None:
    out = tmp_path / "chain.pem"
    result = cli_run(inited, ["export", "chain", "--out", str(out)])
    assert result.exit_code == 0
    assert [c.subject for c in pem_certs(out.read_text())] == [
        c.subject for c in pem_certs(ok(inited, "export", "chain"))
    ]
    cert = pem_certs(ok(inited, "export", "cert"))
    assert len(cert) == 1 and _bc(cert[0]).path_length == 0


# ---------------------------------------------------------------------------- errors (items 8, 9)


def _csr_file(tmp_path: Path, kind: str) -> str:
    good = csr_der(make_key("p256"), "ok.example.test")
    data = {
        "truncated": good[: len(good) // 2],
        "garbage": b"not a certificate request\n",
        "wrong-signature": tamper_signature(good),
        "rsa-1024": csr_der(make_key("rsa1024"), "ok.example.test"),
        "secp256k1": csr_der(make_key("secp256k1"), "ok.example.test"),
    }[kind]
    return str(write(tmp_path / f"{kind}.csr", data))


ERRORS: list[tuple[str, list[str], int, str]] = [
    ("truncated-csr", ["issue", "--csr", "CSR:truncated"], 1, "not a valid PKCS#10"),
    ("garbage-csr", ["issue", "--csr", "CSR:garbage"], 1, "not a valid PKCS#10"),
    ("wrong-signature", ["issue", "--csr", "CSR:wrong-signature"], 1, "signature does not verify"),
    ("rsa-1024", ["issue", "--csr", "CSR:rsa-1024"], 1, "too small"),
    ("curve", ["issue", "--csr", "CSR:secp256k1"], 1, "not supported"),
    ("too-long", ["issue", "--cn", "a.example.test", "--days", "398"], 1, "profile.max_validity"),
    ("wildcard", ["issue", "--cn", "*.example.test"], 1, "wildcards"),
    ("bad-idn", ["issue", "--san", "a\u200db.example.test"], 1, "U+200D"),
    ("non-ascii-email", ["issue", "--san", "email:jürgen@example.test", "--profile", "client"], 1,
     "non-ASCII"),
    ("bad-san", ["issue", "--san", "uri:http://[::1"], 1, "not a valid URI"),
    ("nothing", ["issue"], 1, "give --csr"),
    ("unknown-profile", ["issue", "--cn", "a.example.test", "--profile", "nope"], 1, "profile"),
    ("unknown-authority", ["issue", "--cn", "a.example.test", "--authority", "nope"], 1, "nope"),
    ("unknown-serial-show", ["show", "abcdef12"], 1, "no certificate"),
    ("unknown-serial-revoke", ["revoke", "abcdef12"], 1, "no certificate"),
    ("bad-serial", ["revoke", "xyz"], 1, "hexadecimal"),
    ("missing-passphrase", ["issue", "--cn", "a.example.test"], 3, "CA_KEY_PASSPHRASE"),
    ("bad-subject", ["init", "--name", "n2", "--subject", "garbage"], 1, "RFC 4514"),
    ("bad-permit", ["init", "--name", "n3", "--permit", "*.example.test"], 1, "name constraint"),
]  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One initialised CA (SQLite) for the error cases: each must leave it unchanged."""
    settings = make_settings(tmp_path_factory.mktemp("shared"))
    ok(settings, "init")
    return settings


def _check_error(
    settings: Settings, tmp_path: Path, case: str, args: list[str], code: int, message: str
) -> None:
    args = [_csr_file(tmp_path, a[4:]) if a.startswith("CSR:") else a for a in args]
    if args[0] == "issue":
        args += ["--out", str(tmp_path / "out")]
    env = {"CA_KEY_PASSPHRASE": None} if case == "missing-passphrase" else {}
    db = Database(settings.resolved_database_url)
    try:
        (certificates, events), authorities = counts(db), count_rows(db, "authorities")
        result = cli_run(settings, args, **env)
        assert result.exit_code == code, result.output
        line = one_error_line(result)
        assert message in line
        # Nothing changed, but a refusal by a policy rule is itself one audit event.
        events += "(rule: " in line
        assert (counts(db), count_rows(db, "authorities")) == ((certificates, events), authorities)
    finally:
        db.dispose()
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize(("case", "args", "code", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_and_leave_no_record(
    shared: Settings, tmp_path: Path, case: str, args: list[str], code: int, message: str
) -> None:
    _check_error(shared, tmp_path, case, args, code, message)


@pytest.mark.parametrize("case", ["garbage-csr", "too-long", "unknown-serial-revoke"])
def test_errors_leave_no_record_on_both_databases(
    inited: Settings, tmp_path: Path, case: str
) -> None:
    _, args, code, message = next(e for e in ERRORS if e[0] == case)
    _check_error(inited, tmp_path, case, args, code, message)


def test_console_script_end_to_end(tmp_path: Path, openssl: str) -> None:
    """The installed ``ca-service`` script, as a user runs it, in a real process."""
    settings = make_settings(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env |= {k: v for k, v in cli_env(settings).items() if v is not None}
    script = str(BIN / "ca-service")

    def sh(*args: str, cwd: Path = tmp_path) -> tuple[int, str, str]:
        result = run([script, *args], env=env, cwd=cwd)
        assert "Traceback" not in result.stdout + result.stderr
        return result.returncode, result.stdout, result.stderr

    assert sh("init")[0] == 0
    code, out, _ = sh("issue", "--cn", "e2e.example.test")
    assert code == 0 and "wrote" in out
    assert (tmp_path / "e2e.example.test.crt").exists()
    assert (tmp_path / "e2e.example.test.key").exists()
    code, out, err = sh("issue", "--csr", _csr_file(tmp_path, "garbage"))
    assert code == 1 and out == "" and err.startswith("error: ") and len(err.splitlines()) == 1
    env["CA_KEY_PASSPHRASE"] = "wrong"
    code, _, err = sh("issue", "--cn", "x.example.test")
    assert code == 3 and "cannot decrypt" in err and len(err.splitlines()) == 1
    env["CA_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    code, _, err = sh("list")
    assert code == 3 and err.startswith("error: ") and len(err.splitlines()) == 1
