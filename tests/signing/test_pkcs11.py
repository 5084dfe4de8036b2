"""Issue 16: CA keys in a PKCS#11 token (SoftHSM2), for every supported key type.

``ca-service init --key-backend pkcs11`` runs as a subprocess; issuance from a CSR and a CRL
too; OCSP answers come from the core in this process (on the same token), and every result is
checked by openssl and pkilint. The keys are checked in the token (sensitive, never
extractable) and looked for everywhere else: the data directory and every database row.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.config import Settings
from ca_service.core.facade import Core
from ca_service.domain import KeyType
from ca_service.errors import BadRequest, ConfigError
from ca_service.signing.pkcs11 import KeyRef, Pkcs11Keystore
from ca_service.storage.db import Database
from ca_service.wiring import build_authority

from ..conftest import make_settings, run
from ..helpers import (
    LEAF_KEY_KIND,
    all_stored_bytes,
    csr_pem,
    lint_cert,
    lint_crl,
    make_key,
    openssl_verify,
    tree_bytes,
    write,
)
from .softhsm import MODULE, PIN, SoftHSM

CA_SERVICE = str(Path(sys.executable).parent / "ca-service")
LINT_OCSP = Path(sys.executable).parent / "lint_ocsp_response"

KEY_TYPES = [
    pytest.param(KeyType.ECDSA_P256, id="p256"),
    pytest.param(KeyType.ECDSA_P384, id="p384"),
    pytest.param(KeyType.RSA_2048, id="rsa2048"),
    pytest.param(KeyType.RSA_3072, id="rsa3072"),
    pytest.param(KeyType.RSA_4096, id="rsa4096"),
]


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHSM]:
    """One SoftHSM configuration for this process (SOFTHSM2_CONF is read at initialisation)."""
    hsm = SoftHSM.create(tmp_path_factory.mktemp("softhsm"))
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    yield hsm
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


def token_settings(tmp_path: Path, db_url: str, label: str) -> Settings:
    return make_settings(
        tmp_path,
        db_url,
        key_backend="pkcs11",
        key_passphrase=None,
        pkcs11_module=MODULE,
        pkcs11_token_label=label,
        pkcs11_pin=PIN.encode(),
    )


def cli(
    hsm: SoftHSM, label: str, tmp_path: Path, db_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """The real ``ca-service`` with the token backend and no key passphrase at all."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    full.update(hsm.env(label))
    full.update(
        {
            "CA_DATA_DIR": str(tmp_path / "data"),
            "CA_DATABASE_URL": db_url,
            "CA_PUBLIC_URL": "http://127.0.0.1:8000",
        }
    )
    full.update(env)
    return subprocess.run(
        [CA_SERVICE, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    """A start-up failure: non-zero exit, one 'error:' line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def assert_no_key_material(core: Core, data_dir: Path, db: Database) -> None:
    """The CA keys are nowhere but in the token: no key file, no PEM or DER private key in the
    data directory or any row, and the token says each key is sensitive and never extractable."""
    keystore = core._ctx.keystore
    assert isinstance(keystore, Pkcs11Keystore)
    assert not (data_dir / "keys").exists()
    on_disk = tree_bytes(data_dir)
    stored = all_stored_bytes(db)
    for blob in (on_disk, stored):
        assert b"PRIVATE KEY" not in blob
        # PKCS#8 DER of an EC or RSA key starts SEQUENCE, INTEGER 0, SEQUENCE { OID ... }.
        assert b"\x02\x01\x00\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01" not in blob
        assert b"\x02\x01\x00\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01" not in blob
    references = [a.key_file for a in core.list_authorities()]
    import sqlalchemy as sa

    with db.engine.connect() as conn:
        references += [r[0] for r in conn.execute(sa.text("SELECT key_file FROM ocsp_responders"))]
    assert len(references) >= 2
    for reference in references:
        assert reference.startswith("pkcs11:object="), reference
        flags = keystore.key_flags(reference)
        assert flags == {
            "sensitive": True,
            "extractable": False,
            "never_extractable": True,
            "always_sensitive": True,
        }, (reference, flags)


def ocsp_round_trip(
    core: Core, openssl: str, directory: Path, leaf: Path, inter: Path, chain: Path
) -> str:
    """An OCSP request by openssl, answered by the core, verified by openssl and pkilint."""
    request = directory / "req.der"
    made = run(
        [openssl, "ocsp", "-issuer", str(inter), "-cert", str(leaf), "-reqout", str(request)]
    )
    assert made.returncode == 0, made.stderr
    answer = core.answer_ocsp(request.read_bytes())
    response = write(directory / "resp.der", answer.der)
    checked = run(
        [
            openssl,
            "ocsp",
            "-respin",
            str(response),
            "-issuer",
            str(inter),
            "-cert",
            str(leaf),
            "-CAfile",
            str(chain),
            "-no_nonce",
        ]
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Response verify OK" in checked.stderr + checked.stdout, checked.stderr
    linted = run([str(LINT_OCSP), "lint", "-s", "WARNING", str(response)])
    assert linted.returncode == 0 and linted.stdout.strip() == "", linted.stdout + linted.stderr
    return checked.stdout


def init_issue_and_check(
    softhsm: SoftHSM, openssl: str, tmp_path: Path, db_url: str, key_type: KeyType
) -> None:
    label = softhsm.new_token()
    init = cli(
        softhsm,
        label,
        tmp_path,
        db_url,
        "init",
        "--key-backend",
        "pkcs11",
        "--key-type",
        key_type.value,
    )
    assert init.returncode == 0, init.stderr
    assert f"issuing CA, {key_type.value}" in init.stdout

    key = make_key(LEAF_KEY_KIND[key_type])
    csr = write(tmp_path / "leaf.csr", csr_pem(key, "hsm.example.test", ["hsm.example.test"]))
    issued = cli(
        softhsm,
        label,
        tmp_path,
        db_url,
        "issue",
        "--csr",
        str(csr),
        "--out",
        str(tmp_path / "leaf"),
    )
    assert issued.returncode == 0, issued.stderr
    leaf, chain, root = (tmp_path / f"leaf.{s}" for s in ("crt", "chain.pem", "root.pem"))
    code, out = openssl_verify(openssl, root, leaf, chain)
    assert code == 0 and "OK" in out, out
    assert lint_cert(leaf) == ""
    inter = write(tmp_path / "inter.pem", chain.read_text())
    code, out = openssl_verify(openssl, root, inter)
    assert code == 0, out

    crl = tmp_path / "crl.pem"
    made = cli(softhsm, label, tmp_path, db_url, "crl", "--out", str(crl))
    assert made.returncode == 0, made.stderr
    verified = run([openssl, "crl", "-in", str(crl), "-CAfile", str(inter), "-noout", "-verify"])
    assert verified.returncode == 0 and "verify OK" in verified.stdout + verified.stderr
    crl_der = write(
        tmp_path / "crl.der",
        x509.load_pem_x509_crl(crl.read_bytes()).public_bytes(serialization.Encoding.DER),
    )
    assert lint_crl(crl_der) == ""

    core = build_authority(token_settings(tmp_path, db_url, label))
    try:
        core.load_keys()
        bundle = write(tmp_path / "bundle.pem", chain.read_text() + root.read_text())
        status = ocsp_round_trip(core, openssl, tmp_path, leaf, inter, bundle)
        assert ": good" in status, status
        assert_no_key_material(core, tmp_path / "data", core.db)
    finally:
        core.db.dispose()


@pytest.mark.slow  # init, issue and crl as ca-service processes, then openssl and pkilint
@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_inits_issues_and_signs_crl_and_ocsp_in_the_token(
    softhsm: SoftHSM, openssl: str, tmp_path: Path, key_type: KeyType
) -> None:
    init_issue_and_check(softhsm, openssl, tmp_path, f"sqlite:///{tmp_path / 'ca.db'}", key_type)


@pytest.mark.slow  # several ca-service processes
def test_no_key_material_in_postgresql_either(
    softhsm: SoftHSM, openssl: str, tmp_path: Path, pg_url: str
) -> None:
    init_issue_and_check(softhsm, openssl, tmp_path, pg_url, KeyType.ECDSA_P256)


# ---------------------------------------------------------------------------- adoption


def _make_token_key(
    keystore: Pkcs11Keystore, label: str, key_type: KeyType, *, extractable: bool = False
) -> bytes:
    """A key made in the token the way a key ceremony would (with the HSM's own tools)."""
    import secrets

    import pkcs11
    from pkcs11 import Attribute, MechanismFlag

    key_id = secrets.token_bytes(4)
    template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: not extractable,
        Attribute.EXTRACTABLE: extractable,
    }

    def op(session: object) -> None:
        common = {
            "store": True,
            "label": label,
            "id": key_id,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "private_template": template,
            "public_template": {Attribute.TOKEN: True},
        }
        if key_type is KeyType.ECDSA_P256:
            params = session.create_domain_parameters(  # type: ignore[attr-defined]
                pkcs11.KeyType.EC,
                {Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
                local=True,
            )
            params.generate_keypair(**common)
        else:
            session.generate_keypair(pkcs11.KeyType.RSA, 2048, **common)  # type: ignore[attr-defined]

    keystore.token.run("making a test key", op, retry=False)
    return key_id


@pytest.mark.slow  # several ca-service processes
def test_init_adopts_keys_already_in_the_token_by_label_and_by_id(
    softhsm: SoftHSM, openssl: str, tmp_path: Path
) -> None:
    label = softhsm.new_token()
    keystore = Pkcs11Keystore(MODULE, label, PIN.encode())
    _make_token_key(keystore, "ceremony-root", KeyType.ECDSA_P256)
    inter_id = _make_token_key(keystore, "ceremony-issuing", KeyType.ECDSA_P256)
    db_url = f"sqlite:///{tmp_path / 'ca.db'}"
    init = cli(
        softhsm,
        label,
        tmp_path,
        db_url,
        "init",
        "--key-backend",
        "pkcs11",
        "--root-key-label",
        "ceremony-root",
        "--key-id",
        inter_id.hex(),
    )
    assert init.returncode == 0, init.stderr
    core = build_authority(token_settings(tmp_path, db_url, label))
    try:
        core.load_keys()
        records = {a.name: a for a in core.list_authorities()}
        root_ref = KeyRef.parse(records["default-root"].key_file)
        inter_ref = KeyRef.parse(records["default"].key_file)
        # Stored with the label and the id the token has, however they were named.
        assert root_ref.label == "ceremony-root" and root_ref.key_id is not None
        assert inter_ref == KeyRef("ceremony-issuing", inter_id)
        issued = core.issue_with_new_key(
            __import__("ca_service.domain", fromlist=["Actor"]).Actor("test"),
            common_name="adopted.example.test",
        )
        leaf = write(tmp_path / "leaf.pem", issued.certificate_pem)
        root, inter = (
            write(tmp_path / "root.pem", core.chain_pem()[-1]),
            write(tmp_path / "inter.pem", core.chain_pem()[0]),
        )
        code, out = openssl_verify(openssl, root, leaf, inter)
        assert code == 0, out
    finally:
        core.db.dispose()
    # The adopted keys are still there (nothing was destroyed), and a second init names them
    # once more: the records, not the keys, say they exist already.
    again = cli(
        softhsm,
        label,
        tmp_path,
        db_url,
        "init",
        "--key-backend",
        "pkcs11",
        "--root-key-label",
        "ceremony-root",
    )
    assert "exists already" in one_clear_line(again)


@pytest.mark.slow  # several ca-service processes
def test_adoption_refuses_an_extractable_key_a_wrong_type_and_a_missing_key(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    label = softhsm.new_token()
    keystore = Pkcs11Keystore(MODULE, label, PIN.encode())
    _make_token_key(keystore, "leaky", KeyType.ECDSA_P256, extractable=True)
    _make_token_key(keystore, "rsa-one", KeyType.RSA_2048)
    with pytest.raises(BadRequest, match="can be read out of the token"):
        keystore.existing("pkcs11:object=leaky", KeyType.ECDSA_P256)
    with pytest.raises(BadRequest, match="rsa-2048, not ecdsa-p256"):
        keystore.existing("pkcs11:object=rsa-one", KeyType.ECDSA_P256)
    with pytest.raises(ConfigError, match="no private key pkcs11:object=absent"):
        keystore.existing("pkcs11:object=absent", KeyType.ECDSA_P256)
    db_url = f"sqlite:///{tmp_path / 'ca.db'}"
    refused = cli(
        softhsm,
        label,
        tmp_path,
        db_url,
        "init",
        "--key-backend",
        "pkcs11",
        "--root-key-label",
        "leaky",
    )
    assert "can be read out of the token" in one_clear_line(refused)
    # The file backend has no token keys to adopt.
    plain = cli(
        softhsm,
        label,
        tmp_path,
        db_url,
        "init",
        "--key-backend",
        "file",
        "--root-key-label",
        "x",
        CA_KEY_PASSPHRASE="p",
    )
    assert "--key-backend pkcs11" in one_clear_line(plain)


def test_key_references_round_trip_as_pkcs11_uris() -> None:
    ref = KeyRef("a root;key/é", bytes.fromhex("00ff10"))
    text = str(ref)
    assert text == "pkcs11:object=a%20root%3Bkey%2F%C3%A9;id=%00%ff%10"
    assert KeyRef.parse(text) == ref
    assert KeyRef.parse("pkcs11:id=%01;object=x;type=private") == KeyRef("x", b"\x01")
    assert KeyRef.of(None, "01:02") == KeyRef(None, b"\x01\x02")
    with pytest.raises(BadRequest):
        KeyRef.of(None, "zz")
    with pytest.raises(BadRequest):
        KeyRef.parse("pkcs11:type=private")
    with pytest.raises(ConfigError):
        KeyRef.parse("default-root-1234.key.pem")


# ---------------------------------------------------------------------------- failures at start


@pytest.mark.slow  # several ca-service processes
def test_each_start_failure_is_one_clear_line(softhsm: SoftHSM, tmp_path: Path) -> None:
    label = softhsm.new_token()
    db_url = f"sqlite:///{tmp_path / 'ca.db'}"
    assert cli(softhsm, label, tmp_path, db_url, "init").returncode == 0
    bind = {"CA_BIND": "127.0.0.1:9"}  # never reached: each start stops before gunicorn

    line = one_clear_line(
        cli(
            softhsm,
            label,
            tmp_path,
            db_url,
            "serve",
            CA_PKCS11_MODULE="/nonexistent/libnothing.so",
            **bind,
        )
    )
    assert "PKCS#11 module /nonexistent/libnothing.so does not exist" in line
    not_a_module = write(tmp_path / "not-a-module.so", b"not a library")
    line = one_clear_line(
        cli(softhsm, label, tmp_path, db_url, "serve", CA_PKCS11_MODULE=str(not_a_module), **bind)
    )
    assert "cannot load PKCS#11 module" in line and "not a PKCS#11 library" in line
    line = one_clear_line(
        cli(
            softhsm, label, tmp_path, db_url, "serve", CA_PKCS11_TOKEN_LABEL="no-such-token", **bind
        )
    )
    assert "no PKCS#11 token labelled 'no-such-token'" in line
    line = one_clear_line(
        cli(softhsm, label, tmp_path, db_url, "serve", CA_PKCS11_PIN="0000-wrong", **bind)
    )
    assert "refused the PIN" in line and "0000" not in line and PIN not in line
    # The module loads but cannot initialise (SoftHSM without its configuration).
    line = one_clear_line(
        cli(softhsm, label, tmp_path, db_url, "serve",
            SOFTHSM2_CONF=str(tmp_path / "absent.conf"), **bind)
    )  # fmt: skip
    assert f"PKCS#11 token {label!r} failed while" in line and "GeneralError" in line
    other = softhsm.new_token("empty")
    line = one_clear_line(cli(softhsm, other, tmp_path, db_url, "serve", **bind))
    assert "no private key pkcs11:object=default-root-" in line and other in line
    line = one_clear_line(cli(softhsm, label, tmp_path, db_url, "serve", CA_PKCS11_PIN="", **bind))
    assert "no PKCS#11 PIN" in line
    line = one_clear_line(
        cli(
            softhsm,
            label,
            tmp_path,
            db_url,
            "serve",
            CA_KEY_BACKEND="file",
            CA_KEY_PASSPHRASE="x",
            **bind,
        )
    )
    assert "is in a PKCS#11 token" in line and "key_backend = file" in line


@pytest.mark.slow  # several ca-service processes
def test_the_pin_comes_from_a_file_or_the_environment_never_the_config_file(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    label = softhsm.new_token()
    db_url = f"sqlite:///{tmp_path / 'ca.db'}"
    pin_file = write(tmp_path / "pin", PIN + "\n")
    pin_file.chmod(0o600)
    config = write(tmp_path / "ca.toml", f'pkcs11_pin_file = "{pin_file}"\n')
    made = cli(
        softhsm, label, tmp_path, db_url, "init", CA_PKCS11_PIN="", CA_CONFIG_FILE=str(config)
    )
    assert made.returncode == 0, made.stderr
    inline = write(tmp_path / "inline.toml", f'pkcs11_pin = "{PIN}"\n')
    line = one_clear_line(
        cli(
            softhsm,
            label,
            tmp_path,
            db_url,
            "authorities",
            CA_PKCS11_PIN="",
            CA_CONFIG_FILE=str(inline),
        )
    )
    assert "unknown setting 'pkcs11_pin'" in line and "environment" in line
    help_text = cli(softhsm, label, tmp_path, db_url, "init", "--help").stdout
    assert "--pin" not in help_text
    line = one_clear_line(
        cli(softhsm, label, tmp_path, db_url, "authorities", CA_KEY_BACKEND="hsm")
    )
    assert "key_backend must be 'database' or 'file' or 'pkcs11'" in line


@pytest.mark.slow  # several ca-service processes
def test_an_intermediate_certified_elsewhere_is_imported_with_its_token_key(
    softhsm: SoftHSM, openssl: str, tmp_path: Path
) -> None:
    """The offline-root ceremony: the issuing CA's certificate was signed elsewhere (here: by a
    first ca-service on the same token); an online service adopts it with its key by label."""
    label = softhsm.new_token()
    offline, online = tmp_path / "offline", tmp_path / "online"
    offline_db = f"sqlite:///{tmp_path / 'offline.db'}"
    assert cli(softhsm, label, offline, offline_db, "init", "--name", "acme").returncode == 0
    core = build_authority(token_settings(offline, offline_db, label))
    try:
        records = {a.name: a for a in core.list_authorities()}
        inter_ref = records["acme"].key_file
        chain = core.chain_pem("acme")
    finally:
        core.db.dispose()
    inter_label = KeyRef.parse(inter_ref).label
    assert inter_label is not None
    cert = write(tmp_path / "inter.pem", chain[0])
    root = write(tmp_path / "root.pem", chain[-1])
    online_db = f"sqlite:///{tmp_path / 'online.db'}"

    # The wrong key for the certificate is refused, and nothing is recorded.
    root_label = KeyRef.parse(records["acme-root"].key_file).label
    assert root_label is not None
    wrong = cli(
        softhsm,
        label,
        online,
        online_db,
        "init",
        "--name",
        "acme",
        "--import-cert",
        str(cert),
        "--key-label",
        root_label,
    )
    assert "is not the certificate's key" in one_clear_line(wrong)

    made = cli(
        softhsm,
        label,
        online,
        online_db,
        "init",
        "--name",
        "acme",
        "--import-cert",
        str(cert),
        "--import-chain",
        str(root),
        "--key-label",
        inter_label,
    )
    assert made.returncode == 0, made.stderr
    key = make_key("p256")
    csr = write(tmp_path / "leaf.csr", csr_pem(key, "imported.example.test"))
    issued = cli(
        softhsm,
        label,
        online,
        online_db,
        "issue",
        "--csr",
        str(csr),
        "--out",
        str(tmp_path / "leaf"),
    )
    assert issued.returncode == 0, issued.stderr
    code, out = openssl_verify(openssl, root, tmp_path / "leaf.crt", cert)
    assert code == 0, out
    # Only the online service's records changed; the key is the same token object.
    online_core = build_authority(token_settings(online, online_db, label))
    try:
        assert [a.key_file for a in online_core.list_authorities()] == [inter_ref]
    finally:
        online_core.db.dispose()


def _token_ca(softhsm: SoftHSM, tmp_path: Path) -> tuple[Core, Pkcs11Keystore]:
    label = softhsm.new_token()
    core = build_authority(
        token_settings(tmp_path, f"sqlite:///{tmp_path / 'ca.db'}", label), apply_migrations=True
    )
    from ca_service.core.hierarchy import HierarchySpec
    from ca_service.domain import Actor

    core.create_hierarchy(HierarchySpec(), Actor("test"))
    core.load_keys()
    keystore = core._ctx.keystore
    assert isinstance(keystore, Pkcs11Keystore)
    return core, keystore


def test_a_token_key_that_is_not_the_certificates_is_refused(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    core, keystore = _token_ca(softhsm, tmp_path)
    try:
        records = {a.name: a for a in core.list_authorities()}
        inter = x509.load_der_x509_certificate(records["default"].cert_der)
        # The root's key for the intermediate's certificate: a swapped reference.
        with pytest.raises(ConfigError, match="is not its certificate's key"):
            keystore.signer(records["default-root"].key_file, inter, KeyType.ECDSA_P256, "x")
        with pytest.raises(ConfigError, match="its key is a file"):
            keystore.signer("default-1234.key.pem", inter, KeyType.ECDSA_P256, "x")
        with pytest.raises(BadRequest, match="not supported with key_backend = pkcs11"):
            keystore.generate("ed", KeyType.ED25519)
    finally:
        core.db.dispose()


def test_a_forked_process_opens_its_own_session(softhsm: SoftHSM, tmp_path: Path) -> None:
    """What a gunicorn worker does after the fork: the parent's session is not reused (the
    child re-initialises the library) and both processes go on signing."""
    core, _ = _token_ca(softhsm, tmp_path)
    try:
        signer = core._registry.load("default").signer
        tbs = b"to be signed"
        from ca_service.signing import algorithms

        algorithms.verify(signer.certificate, signer.key_type, signer.sign_crl_tbs(tbs), tbs)
        pid = os.fork()
        if pid == 0:  # the child: exit status says whether its signature verified
            code = 1
            try:
                algorithms.verify(
                    signer.certificate, signer.key_type, signer.sign_crl_tbs(tbs), tbs
                )
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        algorithms.verify(signer.certificate, signer.key_type, signer.sign_crl_tbs(tbs), tbs)
    finally:
        core.db.dispose()


def test_in_process_every_signature_verifies_under_the_token_keys(
    softhsm: SoftHSM, tmp_path: Path
) -> None:
    """The fast path of the end-to-end tests above: root, intermediate, leaf, CRL, OCSP answer
    (the delegated responder's certificate and the answer itself), all signed in the token and
    checked with `cryptography` against the certificates' public keys."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ocsp

    from ca_service.domain import Actor

    core, keystore = _token_ca(softhsm, tmp_path)
    try:
        issued = core.issue_with_new_key(Actor("test"), common_name="fast.hsm.example.test")
        leaf = x509.load_pem_x509_certificate(issued.certificate_pem.encode())
        chain = [x509.load_pem_x509_certificate(p.encode()) for p in core.chain_pem()]
        inter, root = chain[0], chain[-1]
        root.verify_directly_issued_by(root)
        inter.verify_directly_issued_by(root)
        leaf.verify_directly_issued_by(inter)

        crl = x509.load_der_x509_crl(core.generate_crl("default").der)
        assert crl.is_signature_valid(inter.public_key())  # type: ignore[arg-type]

        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, inter, hashes.SHA256()).build()
        answer = ocsp.load_der_ocsp_response(
            core.answer_ocsp(request.public_bytes(serialization.Encoding.DER)).der
        )
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        responder = answer.certificates[0]
        responder.verify_directly_issued_by(inter)
        from ca_service.signing import algorithms

        algorithms.verify(
            responder, KeyType.ECDSA_P256, answer.signature, answer.tbs_response_bytes
        )
        # The responder's key is a token key too, as sensitive as the CA's.
        import sqlalchemy as sa

        with core.db.engine.connect() as conn:
            (ref,) = conn.execute(sa.text("SELECT key_file FROM ocsp_responders")).one()
        assert keystore.key_flags(ref)["extractable"] is False
    finally:
        core.db.dispose()
