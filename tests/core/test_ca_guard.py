"""Issue 9 item 4: CA certificates are guarded, and say where their own status is published.

Everything runs against a real `ca-service serve` (gunicorn) on loopback, on SQLite and
PostgreSQL, with real clients: `openssl ocsp`, `openssl verify -crl_check_all`, the CLI as a
subprocess, and Java's PKIX validator (the client whose failure was reported).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from ca_service.core.facade import Core
from ca_service.domain import CertStatus, RevocationReason
from ca_service.errors import PolicyRejected
from ca_service.signing.crl import entry_der
from ca_service.signing.serials import serial_hex
from ca_service.storage.db import unit_of_work
from ca_service.storage.repositories import CertificateRepository

from ..conftest import ADMIN, run
from ..external_ca import external_ca_files
from ..helpers import BIN, lint_cert, write
from ..live import LiveServer, assert_problem, create_token, fetch_crl, issue, revoke
from ..live import run_cli as cli

JAVA_SOURCE = r"""
import java.io.FileInputStream;
import java.io.InputStream;
import java.security.Security;
import java.security.cert.*;
import java.util.*;

/** Validates a PEM path (leaf first) against a PEM root with revocation checking, configured
 *  only through the two switches an operator would set: OCSP only, or CRL DPs only. */
public class PkixCheck {
    public static void main(String[] args) throws Exception {
        boolean ocsp = args[0].equals("ocsp");
        Security.setProperty("ocsp.enable", ocsp ? "true" : "false");
        System.setProperty("com.sun.security.enableCRLDP", ocsp ? "false" : "true");
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        List<Certificate> path = new ArrayList<>();
        try (InputStream in = new FileInputStream(args[1])) {
            path.addAll(cf.generateCertificates(in));
        }
        X509Certificate root;
        try (InputStream in = new FileInputStream(args[2])) {
            root = (X509Certificate) cf.generateCertificate(in);
        }
        PKIXParameters params = new PKIXParameters(Set.of(new TrustAnchor(root, null)));
        params.setRevocationEnabled(true);
        try {
            CertPathValidator.getInstance("PKIX").validate(cf.generateCertPath(path), params);
            System.out.println("OK");
        } catch (CertPathValidatorException e) {
            System.out.println("FAIL index=" + e.getIndex() + " reason=" + e.getReason()
                + " message=" + e.getMessage());
            System.exit(1);
        }
    }
}
"""


# ---------------------------------------------------------------------------- helpers


def pem_certs(text: bytes | str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text if isinstance(text, bytes) else text.encode())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def authority_certs(live: LiveServer, name: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(issuing CA, root) of ``name`` as the public URLs publish them."""
    chain = live.request("GET", f"/ca/{name}/chain.pem")
    assert chain.status == 200, chain.body
    inter, root = pem_certs(chain.body)
    served_root = live.request("GET", f"/ca/{name}/root.pem")
    assert served_root.status == 200 and pem_certs(served_root.body) == [root]
    return inter, root


def authorities(live: LiveServer) -> dict[str, dict[str, Any]]:
    reply = live.request("GET", "/api/v1/authorities", token=live.admin_token)
    assert reply.status == 200, reply.body
    return {a["name"]: a for a in reply.json["items"]}


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def crl_file(live: LiveServer, path: Path, *names: str) -> Path:
    """The current CRLs of ``names`` (each fetched, header-checked and pkilint-clean) in one PEM."""
    path.write_bytes(
        b"".join(
            fetch_crl(live, f"/ca/{n}/crl").public_bytes(serialization.Encoding.PEM) for n in names
        )
    )
    return path


def verify_all(
    openssl: str, d: Path, leaf: Path, inter: x509.Certificate, root: x509.Certificate, crls: Path
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -crl_check_all`: every certificate of the path needs its issuer's CRL."""
    (d / "root.pem").write_bytes(pem(root))
    (d / "inter.pem").write_bytes(pem(inter))
    return run(
        [openssl, "verify", "-crl_check_all", "-CAfile", str(d / "root.pem"),
         "-untrusted", str(d / "inter.pem"), "-CRLfile", str(crls), str(leaf)]
    )  # fmt: skip


def ocsp_status(
    live: LiveServer, openssl: str, d: Path, cert: x509.Certificate, issuer: x509.Certificate,
    root: x509.Certificate,
) -> str:  # fmt: skip
    """What `openssl ocsp` says of ``cert`` (good / revoked / unknown), the answer verified;
    the DER answer is left in ``d / "q-resp.der"``."""
    (d / "q-cert.pem").write_bytes(pem(cert))
    (d / "q-issuer.pem").write_bytes(pem(issuer))
    (d / "q-root.pem").write_bytes(pem(root))
    result = run(
        [openssl, "ocsp", "-issuer", str(d / "q-issuer.pem"), "-cert", str(d / "q-cert.pem"),
         "-url", f"{live.base_url}/ocsp", "-CAfile", str(d / "q-root.pem"),
         "-respout", str(d / "q-resp.der")]
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "Response verify OK" in out, out
    line = next(x for x in result.stdout.splitlines() if x.startswith(str(d / "q-cert.pem")))
    return line.split(":", 1)[1].strip()


@pytest.fixture(scope="module")
def java(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """The compiled PkixCheck class directory; None (the tests skip) where Java is absent,
    except in CI, where a missing JDK fails."""
    if shutil.which("java") is None or shutil.which("javac") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("java and javac are required in CI (apt-get install default-jdk-headless)")
        yield None
        return
    d = tmp_path_factory.mktemp("java")
    (d / "PkixCheck.java").write_text(JAVA_SOURCE)
    result = run(["javac", "-d", str(d), str(d / "PkixCheck.java")])
    assert result.returncode == 0, result.stdout + result.stderr
    yield d


def java_check(java: Path, mode: str, path_pem: Path, root_pem: Path) -> tuple[int, str]:
    result = run(
        ["java", "-Djava.net.useSystemProxies=false", "-cp", str(java), "PkixCheck", mode,
         str(path_pem), str(root_pem)]
    )  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).strip()


def new_hierarchy(live: LiveServer, name: str) -> tuple[x509.Certificate, x509.Certificate]:
    """A second root + issuing CA in the live server's store, made by the real CLI."""
    result = cli(live, "init", "--name", name)
    assert result.returncode == 0, result.stdout + result.stderr
    return authority_certs(live, name)


# ---------------------------------------------------------------------------- the leaf path


def test_leaf_endpoints_and_cli_refuse_a_ca_certificate(live: LiveServer) -> None:
    """Reproduction: revoking the intermediate's (or the root's) serial through the leaf
    endpoint answered 200, and the root then listed itself in its own CRL."""
    inter, root = authority_certs(live, "default")
    before = live.request("GET", "/api/v1/audit?action=certificate.revoke", token=live.admin_token)
    for cert in (inter, root):
        path = f"/api/v1/certificates/{serial_of(cert)}/revoke"
        body = {"reason": "keyCompromise", "authority": "default-root"}
        reply = live.request("POST", path, token=live.admin_token, body=body)
        problem = assert_problem(reply, 403)
        assert problem["rule"] == "revoke.authority_certificate"
        assert "authority revoke" in problem["detail"]
        result = cli(live, "revoke", serial_of(cert), "--authority", "default-root")
        assert result.returncode == 1
        assert "revoke.authority_certificate" in result.stderr
        assert "Traceback" not in result.stderr
        shown = live.request(
            "GET",
            f"/api/v1/certificates/{serial_of(cert)}?authority=default-root",
            token=live.admin_token,
        )
        assert shown.json["status"] == "valid" and shown.json["revoked_at"] is None
    crl = fetch_crl(live, "/ca/default-root/crl")
    assert crl.get_revoked_certificate_by_serial_number(inter.serial_number) is None
    assert crl.get_revoked_certificate_by_serial_number(root.serial_number) is None
    after = live.request("GET", "/api/v1/audit?action=certificate.revoke", token=live.admin_token)
    assert after.json["items"] == before.json["items"]
    assert all(a["status"] == "valid" for a in authorities(live).values())
    assert live.request("GET", "/readyz").status == 200


# ---------------------------------------------------------------------------- what the CA says


def test_intermediate_names_ocsp_crl_and_issuer_and_ocsp_answers_for_it(
    live: LiveServer, openssl: str, tmp_path: Path
) -> None:
    inter, root = authority_certs(live, "default")
    aia = {
        (d.access_method, d.access_location.value)
        for d in inter.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    }
    assert aia == {
        (AuthorityInformationAccessOID.OCSP, f"{live.base_url}/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{live.base_url}/ca/default-root/ca.cer"),
    }
    dp = inter.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in dp[0].full_name] == [f"{live.base_url}/ca/default-root/crl"]
    served = live.request("GET", "/ca/default-root/ca.cer")
    assert x509.load_der_x509_certificate(served.body) == root
    assert ocsp_status(live, openssl, tmp_path, inter, root, root) == "good"
    # Signed by a delegated responder of the root; answer and responder lint clean.
    answer = (tmp_path / "q-resp.der").read_bytes()
    (responder,) = ocsp.load_der_ocsp_response(answer).certificates
    responder.verify_directly_issued_by(root)
    lint = run(
        [str(BIN / "lint_ocsp_response"), "lint", "-s", "WARNING", str(tmp_path / "q-resp.der")]
    )
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
    assert lint_cert(write(tmp_path / "responder.pem", pem(responder))) == ""
    assert lint_cert(write(tmp_path / "inter.pem", pem(inter))) == ""
    # The root is its own anchor: nothing above it speaks for it, and its root.pem is itself.
    own = live.request("GET", "/ca/default-root/root.pem")
    assert pem_certs(own.body) == [root]


def test_crl_check_all_accepts_a_good_leaf_and_rejects_a_revoked_one(
    live: LiveServer, openssl: str, tmp_path: Path
) -> None:
    inter, root = authority_certs(live, "default")
    good = issue(live, common_name="good.crlall.example.test").json
    bad = issue(live, common_name="bad.crlall.example.test").json
    revoke(live, bad["serial"])
    crls = crl_file(live, tmp_path / "crls.pem", "default-root", "default")
    good_pem = tmp_path / "good.pem"
    good_pem.write_text(good["certificate"])
    bad_pem = tmp_path / "bad.pem"
    bad_pem.write_text(bad["certificate"])
    ok = verify_all(openssl, tmp_path, good_pem, inter, root, crls)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr
    refused = verify_all(openssl, tmp_path, bad_pem, inter, root, crls)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    # Without the root's CRL the intermediate's status is unknown: the check is real.
    only_leaf_crl = crl_file(live, tmp_path / "leafcrl.pem", "default")
    missing = verify_all(openssl, tmp_path, good_pem, inter, root, only_leaf_crl)
    assert missing.returncode != 0 and "unable to get certificate CRL" in missing.stdout + (
        missing.stderr
    )


def test_java_pkix_accepts_a_good_leaf_by_ocsp_only_and_by_crl_dp_only(
    live: LiveServer, java: Path | None, tmp_path: Path
) -> None:
    """Reproduction: with ocsp.enable=true and CRL DPs off, Java rejected every good leaf
    ("Certificate does not specify OCSP responder", index 1: the intermediate)."""
    if java is None:
        pytest.skip("java/javac not installed")
    good = issue(live, common_name="good.java.example.test").json
    bad = issue(live, common_name="bad.java.example.test").json
    revoke(live, bad["serial"])
    root = tmp_path / "root.pem"
    root.write_text(good["root"])
    for name, data in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.pem").write_text(data["fullchain"])
    for mode in ("ocsp", "crldp"):
        rc, out = java_check(java, mode, tmp_path / "good.pem", root)
        assert (rc, out) == (0, "OK"), f"{mode}: {out}"
        rc, out = java_check(java, mode, tmp_path / "bad.pem", root)
        assert rc == 1 and "index=0" in out and "REVOKED" in out, f"{mode}: {out}"


# ---------------------------------------------------------------------------- revoking a CA


def test_revoking_an_issuing_ca_is_an_admin_action_that_lists_stops_and_shows(
    live: LiveServer, openssl: str, java: Path | None, tmp_path: Path
) -> None:
    inter, root = new_hierarchy(live, "second")
    leaf = issue(live, common_name="before.second.example.test", authority="second").json
    assert leaf["chain"] and pem_certs(leaf["chain"]) == [inter]
    assert leaf["root"] is not None and pem_certs(leaf["root"]) == [root]
    leaf_pem = tmp_path / "leaf.pem"
    leaf_pem.write_text(leaf["certificate"])
    assert ocsp_status(live, openssl, tmp_path, inter, root, root) == "good"
    crls = crl_file(live, tmp_path / "before.pem", "second-root", "second")
    assert verify_all(openssl, tmp_path, leaf_pem, inter, root, crls).returncode == 0

    path = "/api/v1/authorities/second/revoke"
    issuer, _ = create_token(
        live, "issuer", name="second-issuer", allowed_names=["*.second.example.test"]
    )
    assert_problem(live.request("POST", path, token=issuer, body={"reason": "keyCompromise"}), 403)
    assert_problem(live.request("POST", path, body={"reason": "keyCompromise"}), 401)
    assert_problem(live.request("POST", path, token=live.admin_token, body={}), 400)
    hold = live.request("POST", path, token=live.admin_token, body={"reason": "certificateHold"})
    assert assert_problem(hold, 400)["rule"] == "authority.revoke.hold"
    root_reply = live.request(
        "POST",
        "/api/v1/authorities/second-root/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert assert_problem(root_reply, 403)["rule"] == "authority.revoke.root"
    unknown = live.request(
        "POST", "/api/v1/authorities/nope/revoke", token=live.admin_token, body={"reason": "x"}
    )
    assert_problem(unknown, 400)  # the reason is checked first, and names the valid ones
    missing = live.request(
        "POST",
        "/api/v1/authorities/nope/revoke",
        token=live.admin_token,
        body={"reason": "superseded"},
    )
    assert_problem(missing, 404)
    assert authorities(live)["second"]["status"] == "valid"

    done = live.request("POST", path, token=live.admin_token, body={"reason": "cACompromise"})
    assert done.status == 200, done.body
    assert done.json["status"] == "revoked"
    assert done.json["revocation_reason"] == "cACompromise" and done.json["revoked_at"]
    again = live.request("POST", path, token=live.admin_token, body={"reason": "cACompromise"})
    assert again.status == 200 and again.json["revoked_at"] == done.json["revoked_at"]
    other = live.request("POST", path, token=live.admin_token, body={"reason": "superseded"})
    assert_problem(other, 409)

    # Shown in the API, the CLI, the audit log; the root's CRL and OCSP list it.
    listed = authorities(live)
    assert listed["second"]["status"] == "revoked"
    assert listed["second-root"]["status"] == "valid" and listed["default"]["status"] == "valid"
    shown = cli(live, "authorities", "--json")
    assert shown.returncode == 0, shown.stderr
    by_name = {a["name"]: a for a in json.loads(shown.stdout)}
    assert by_name["second"]["status"] == "revoked"
    assert by_name["second"]["revocation_reason"] == "cACompromise"
    assert "status:      revoked (cACompromise)" in cli(live, "authorities").stdout
    audit = live.request("GET", "/api/v1/audit?action=authority.revoke", token=live.admin_token)
    (event,) = [e for e in audit.json["items"] if e["target"] == "second"]
    assert event["details"]["reason"] == "cACompromise"
    assert event["details"]["issuer"] == "second-root"
    root_crl = fetch_crl(live, "/ca/second-root/crl")
    entry = root_crl.get_revoked_certificate_by_serial_number(inter.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.ca_compromise
    )
    assert root_crl.get_revoked_certificate_by_serial_number(root.serial_number) is None
    assert ocsp_status(live, openssl, tmp_path, inter, root, root).startswith("revoked")
    crls = crl_file(live, tmp_path / "after.pem", "second-root", "second")
    refused = verify_all(openssl, tmp_path, leaf_pem, inter, root, crls)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr
    if java is not None:
        (tmp_path / "full.pem").write_text(leaf["fullchain"])
        (tmp_path / "anchor.pem").write_text(leaf["root"])
        for mode in ("ocsp", "crldp"):
            rc, out = java_check(java, mode, tmp_path / "full.pem", tmp_path / "anchor.pem")
            assert rc == 1 and "index=1" in out and "REVOKED" in out, f"{mode}: {out}"

    # It issues nothing more, through any door: a clear 409, nothing written.
    listing = "/api/v1/certificates?authority=second"
    count = len(live.request("GET", listing, token=live.admin_token).json["items"])
    refused_issue = live.request(
        "POST",
        "/api/v1/certificates",
        token=live.admin_token,
        body={"common_name": "after.second.example.test", "authority": "second"},
    )
    assert assert_problem(refused_issue, 409)["rule"] == "authority.revoked"
    renew = live.request(
        "POST", f"/api/v1/certificates/{leaf['serial']}/renew", token=live.admin_token
    )
    assert assert_problem(renew, 409)["rule"] == "authority.revoked"
    by_cli = cli(live, "issue", "--cn", "cli.second.example.test", "--authority", "second",
                 "--out", str(tmp_path / "cli"))  # fmt: skip
    assert by_cli.returncode == 1 and "authority.revoked" in by_cli.stderr, by_cli.stderr
    after = live.request("GET", listing, token=live.admin_token)
    assert len(after.json["items"]) == count
    # The default authority is untouched, and so is readiness (it is not the default).
    issue(live, common_name="still.default.example.test")
    assert live.request("GET", "/readyz").status == 200
    assert "Traceback" not in live.log()


def test_cli_authority_revoke_asks_then_revokes(live: LiveServer, tmp_path: Path) -> None:
    inter, _ = new_hierarchy(live, "third")
    asked = cli(live, "authority", "revoke", "third", "--reason", "keyCompromise")
    assert asked.returncode != 0 and "Aborted" in asked.stderr
    assert authorities(live)["third"]["status"] == "valid"
    for refused, rule in (("third-root", "authority.revoke.root"), ("nope", "no authority")):
        result = cli(live, "authority", "revoke", refused, "--reason", "superseded", "--yes")
        assert result.returncode == 1 and rule in result.stderr, result.stderr
    hold = cli(live, "authority", "revoke", "third", "--reason", "certificateHold", "--yes")
    assert hold.returncode == 2  # not among the choices
    done = cli(live, "authority", "revoke", "third", "--reason", "keyCompromise", "--yes")
    assert done.returncode == 0, done.stderr
    assert "revoked (keyCompromise)" in done.stdout and "third-root" in done.stdout
    assert authorities(live)["third"]["revocation_reason"] == "keyCompromise"
    crl = fetch_crl(live, "/ca/third-root/crl")
    assert crl.get_revoked_certificate_by_serial_number(inter.serial_number) is not None
    audit = live.request("GET", "/api/v1/audit?action=authority.revoke", token=live.admin_token)
    events = audit.json["items"]
    assert any(e["target"] == "third" and e["actor"].startswith("cli:") for e in events)


# ---------------------------------------------------------------------------- in the core


def test_a_root_never_lists_itself_even_when_its_row_says_revoked(
    ca: Core,
) -> None:
    """What the old leaf endpoint left behind: the root's own row (stored under itself) marked
    revoked, and the root's CRL listing the root. The row is set as that code set it."""
    root = ca.authority_certificate("default-root")
    serial = serial_hex(root.serial_number)
    with unit_of_work(ca.db, write=True) as s:
        repo = CertificateRepository(s)
        row = repo.find_for_update(serial, "default-root")
        assert row is not None
        now = ca.clock.now()
        # With its stored entry, as a revocation writes it since migration 0013: the CRL's
        # join leaves the authority's own serial out too.
        entry = entry_der(serial, now, RevocationReason.UNSPECIFIED.value)
        repo.set_revocation(row, CertStatus.REVOKED, now, RevocationReason.UNSPECIFIED, entry)
    crl = x509.load_der_x509_crl(ca.generate_crl("default-root").der)
    assert crl.get_revoked_certificate_by_serial_number(root.serial_number) is None
    with pytest.raises(PolicyRejected) as refused:
        ca.revoke_authority("default-root", RevocationReason.KEY_COMPROMISE, ADMIN)
    assert refused.value.rule == "authority.revoke.root"


def test_an_imported_intermediate_is_revoked_at_its_issuer_and_its_chain_has_no_local_root(
    ca: Core, tmp_path: Path
) -> None:
    cert, key, root = external_ca_files(tmp_path, 86400)
    ca.import_authority(
        "outside", cert.read_bytes(), key.read_bytes(), None, root.read_bytes(), ADMIN
    )
    ca.import_authority("bare", cert.read_bytes(), key.read_bytes(), None, None, ADMIN)
    with pytest.raises(PolicyRejected) as refused:
        ca.revoke_authority("outside", RevocationReason.KEY_COMPROMISE, ADMIN)
    assert refused.value.rule == "authority.revoke.external_issuer"
    with_root = ca.issue_with_new_key(ADMIN, common_name="o.example.test", authority="outside")
    assert pem_certs("".join(with_root.chain_pem)) == pem_certs(cert.read_bytes())
    assert with_root.root_pem is not None
    assert pem_certs(with_root.root_pem) == pem_certs(root.read_bytes())
    bare = ca.issue_with_new_key(ADMIN, common_name="b.example.test", authority="bare")
    assert pem_certs("".join(bare.chain_pem)) == pem_certs(cert.read_bytes())
    assert bare.root_pem is None
    assert bare.fullchain_pem == bare.certificate_pem + bare.chain_pem[0]
