"""Issue items 2, 3 and 6: client certificates as credentials over `serve --tls`, and renewal by
mutual TLS, against a real gunicorn on loopback, on SQLite and PostgreSQL (revocations, renewals
and the audit of refusals are read from and written to the store).

Before the server starts, the CA is created in-process with a clock ten days back, so that a
client certificate that expired in real time can be issued by the very CA the server trusts.
Every answer is checked against the OpenAPI document (LiveServer.request).
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.clock import FixedClock
from ca_service.config import Settings
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import IssuedCertificate
from ca_service.wiring import build_authority

from ..conftest import ADMIN, make_settings, new_ca
from ..helpers import csr_pem, make_key
from ..live import LiveServer, assert_problem, create_token, start_server

RULES = """
[[mtls]]
match = "subject:CN=admin-bot"
issued_by = "default"
certificate_profile = "client"
role = "admin"

[[mtls]]
match = "san:*.ops.example.test"
role = "reader"
"""


@pytest.fixture(scope="module")
def mtls_live(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[tuple[LiveServer, Path]]:
    base = tmp_path_factory.mktemp("mtls")
    data_dir, url = base / "data", module_db_url
    settings = Settings(data_dir=data_dir, database_url=url, key_passphrase=b"live-test-passphrase")
    clock = FixedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    ca = build_authority(settings, apply_migrations=True, clock=clock)
    ca.create_hierarchy(HierarchySpec(), ADMIN)
    ca.load_keys()
    expired = ca.issue_with_new_key(
        ADMIN, common_name="old.ops.example.test", profile="client", validity_days=1
    )
    ca.db.dispose()
    expired_file = _pem_file(base, "expired", expired.private_key_pem or "", expired)
    config = base / "ca-service.toml"
    config.write_text(RULES)
    server = start_server(data_dir, url, tls=True, extra_env={"CA_CONFIG_FILE": str(config)})
    yield server, expired_file
    server.stop()


@pytest.fixture
def live(mtls_live: tuple[LiveServer, Path]) -> LiveServer:
    return mtls_live[0]


def _pem_file(directory: Path, stem: str, key_pem: str, issued: Any) -> Path:
    """Key and certificate chain in one PEM file, as ssl.SSLContext.load_cert_chain takes it."""
    chain = issued.fullchain_pem if isinstance(issued, IssuedCertificate) else issued
    path = directory / f"{stem}.pem"
    path.write_text(key_pem + chain)
    path.chmod(0o600)
    return path


def _issue_client(
    live: LiveServer, tmp_path: Path, common_name: str, *, profile: str = "client", **body: Any
) -> tuple[dict[str, Any], Path]:
    """A client certificate issued through the API (admin token over HTTPS), and its PEM file."""
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=body.pop("token", live.admin_token),
        body={"common_name": common_name, "profile": profile, **body},
    )
    assert reply.status == 201, reply.body
    data = reply.json
    path = tmp_path / f"{data['serial']}.pem"
    path.write_text(data["private_key"] + data["certificate"] + data["chain"])
    path.chmod(0o600)
    return data, path


def _audit(live: LiveServer, actor: str | None = None) -> list[dict[str, Any]]:
    query = "/api/v1/audit?action=auth.refused&limit=500"
    if actor:
        query += f"&actor={actor}"
    reply = live.request("GET", query, token=live.admin_token)
    assert reply.status == 200
    return list(reply.json["items"])


def _await_audit(live: LiveServer, actor: str, text: str) -> dict[str, Any]:
    """The refusal event of ``actor`` with a reason containing ``text``. The TLS layer records a
    handshake refusal while the client already sees the alert, and unauthenticated refusals are
    counted per minute (their later reasons written within a second), so look a few times."""
    for _ in range(40):
        for event in _audit(live, actor):
            details = event.get("details") or {}
            reasons = [details.get("reason", ""), *details.get("reasons", {})]
            if any(text in reason for reason in reasons):
                return event
        time.sleep(0.1)
    raise AssertionError(f"no auth.refused for {actor} with {text!r}: {_audit(live, actor)[:5]}")


def _refused_in_handshake(live: LiveServer, cert_file: Path) -> None:
    """The connection fails before any HTTP answer (TLS 1.3 may show it at the first read)."""
    with pytest.raises((ssl.SSLError, ConnectionError)):
        live.request("GET", "/api/v1/certificates", client_cert=cert_file, check_spec=False)


# ---------------------------------------------------------------------------- item 2


def test_good_client_certificate_authenticates_with_its_mapped_role(
    live: LiveServer, tmp_path: Path
) -> None:
    data, cert = _issue_client(live, tmp_path, "a.ops.example.test")
    listed = live.request("GET", "/api/v1/certificates", client_cert=cert)
    assert listed.status == 200 and listed.json["items"]
    # The "san:*.ops.example.test" rule gives reader, not issuer: issuance is refused, audited.
    refused = live.request(
        "POST", "/api/v1/certificates", client_cert=cert, body={"common_name": "x.ops.example.test"}
    )
    assert_problem(refused, 403)
    identity = f"cert:default/{data['serial']}"
    [event] = [e for e in _audit(live, identity) if e["target"] == "POST /api/v1/certificates"]
    assert "reader" in event["details"]["reason"] or "issuer" in event["details"]["reason"]


def test_subject_rule_maps_a_certificate_to_admin(live: LiveServer, tmp_path: Path) -> None:
    _, cert = _issue_client(live, tmp_path, "admin-bot")
    reply = live.request("GET", "/api/v1/tokens", client_cert=cert)
    assert reply.status == 200 and reply.json["items"]


def test_peer_certificate_authenticates_too(live: LiveServer, tmp_path: Path) -> None:
    _, cert = _issue_client(live, tmp_path, "p.ops.example.test", profile="peer")
    assert live.request("GET", "/api/v1/authorities", client_cert=cert).status == 200


def test_without_certificate_or_token_it_is_401_and_a_token_still_works(
    live: LiveServer,
) -> None:
    assert_problem(live.request("GET", "/api/v1/certificates"), 401)
    assert live.request("GET", "/api/v1/certificates", token=live.admin_token).status == 200


def test_unmapped_certificate_has_no_role(live: LiveServer, tmp_path: Path) -> None:
    data, cert = _issue_client(live, tmp_path, "nobody.elsewhere.test")
    assert_problem(live.request("GET", "/api/v1/certificates", client_cert=cert), 403)
    assert _audit(live, f"cert:default/{data['serial']}")


def test_revoked_client_certificate_is_refused_at_once_and_audited(
    live: LiveServer, tmp_path: Path
) -> None:
    data, cert = _issue_client(live, tmp_path, "r.ops.example.test")
    assert live.request("GET", "/api/v1/certificates", client_cert=cert).status == 200
    revoked = live.request(
        "POST",
        f"/api/v1/certificates/{data['serial']}/revoke",
        token=live.admin_token,
        body={"reason": "keyCompromise"},
    )
    assert revoked.status == 200
    # No CRL is waited for: the next request is judged against the store.
    problem = assert_problem(live.request("GET", "/api/v1/certificates", client_cert=cert), 401)
    assert "revoked" in problem["detail"]
    event = _await_audit(live, f"cert:default/{data['serial']}", "revoked")
    assert event["target"] == "GET /api/v1/certificates"
    assert event["client_address"] == "127.0.0.1"


def test_foreign_client_certificate_is_refused_in_the_handshake_and_audited(
    live: LiveServer, tmp_path: Path
) -> None:
    foreign_ca = new_ca(make_settings(tmp_path, f"sqlite:///{tmp_path / 'foreign.db'}"))
    foreign = foreign_ca.issue_with_new_key(
        ADMIN, common_name="a.ops.example.test", profile="client"
    )
    foreign_ca.db.dispose()
    # Sent with its whole path, root included: a chain that ends in a root this service does
    # not hold.
    whole_path = foreign.fullchain_pem + (foreign.root_pem or "")
    cert = _pem_file(tmp_path, "foreign", foreign.private_key_pem or "", whole_path)
    _refused_in_handshake(live, cert)
    event = _await_audit(live, "tls:client-certificate", "self-signed certificate in certificate")
    assert event["target"] == "TLS handshake" and event["client_address"] == "127.0.0.1"


def test_expired_client_certificate_is_refused_and_audited(
    mtls_live: tuple[LiveServer, Path],
) -> None:
    live, expired = mtls_live
    leaf = x509.load_pem_x509_certificates(expired.read_bytes())[0]
    assert leaf.not_valid_after_utc < dt.datetime.now(dt.UTC)
    _refused_in_handshake(live, expired)
    _await_audit(live, "tls:client-certificate", "expired")


def test_server_certificate_is_not_a_client_credential(live: LiveServer, tmp_path: Path) -> None:
    _, cert = _issue_client(live, tmp_path, "s.ops.example.test", profile="server")
    _refused_in_handshake(live, cert)  # no clientAuth in its extended key usage
    _await_audit(live, "tls:client-certificate", "purpose")


# ---------------------------------------------------------------------------- item 3


def test_renewal_by_mutual_tls_with_the_same_key(live: LiveServer, tmp_path: Path) -> None:
    old, cert = _issue_client(live, tmp_path, "nobody-renews.elsewhere.test")
    # No [[mtls]] rule matches this certificate: it has no role, yet may renew itself.
    reply = live.request("POST", f"/api/v1/certificates/{old['serial']}/renew", client_cert=cert)
    assert reply.status == 201, reply.body
    new = reply.json
    assert new["serial"] != old["serial"] and "private_key" not in new
    assert reply.headers["location"].endswith(new["serial"])
    for field in ("sans", "profile", "subject", "authority"):
        assert new[field] == old[field]
    old_key = x509.load_pem_x509_certificate(old["certificate"].encode()).public_key()
    assert x509.load_pem_x509_certificate(new["certificate"].encode()).public_key() == old_key
    record = live.request("GET", f"/api/v1/certificates/{old['serial']}", token=live.admin_token)
    assert record.json["successor"] == new["serial"]
    assert new["requester"] == f"cert:default/{old['serial']}"


def test_renewal_by_mutual_tls_with_a_new_csr(live: LiveServer, tmp_path: Path) -> None:
    old, cert = _issue_client(live, tmp_path, "csr.ops.example.test")
    key = make_key("p256")
    reply = live.request(
        "POST",
        f"/api/v1/certificates/{old['serial']}/renew",
        client_cert=cert,
        body={"csr": csr_pem(key, "csr.ops.example.test").decode(), "validity_days": 7},
    )
    assert reply.status == 201, reply.body
    new = reply.json
    leaf = x509.load_pem_x509_certificate(new["certificate"].encode())
    assert leaf.public_key() == key.public_key()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=7, minutes=1)
    # The successor is a working credential with the same mapping (reader by its SAN).
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    successor = _pem_file(tmp_path, "successor", key_pem, new["certificate"] + new["chain"])
    assert live.request("GET", "/api/v1/certificates", client_cert=successor).status == 200
    record = live.request("GET", f"/api/v1/certificates/{old['serial']}", token=live.admin_token)
    assert record.json["successor"] == new["serial"]


def test_a_certificate_cannot_renew_another(live: LiveServer, tmp_path: Path) -> None:
    mine, cert = _issue_client(live, tmp_path, "mine.ops.example.test")
    theirs, _ = _issue_client(live, tmp_path, "theirs.ops.example.test")
    reply = live.request("POST", f"/api/v1/certificates/{theirs['serial']}/renew", client_cert=cert)
    assert_problem(reply, 403)
    target = f"POST /api/v1/certificates/{theirs['serial']}/renew"
    assert any(e["target"] == target for e in _audit(live, f"cert:default/{mine['serial']}"))
    record = live.request("GET", f"/api/v1/certificates/{theirs['serial']}", token=live.admin_token)
    assert record.json["successor"] is None


def test_renewal_by_mutual_tls_is_refused_for_a_revoked_certificate(
    live: LiveServer, tmp_path: Path
) -> None:
    data, cert = _issue_client(live, tmp_path, "gone.ops.example.test")
    path = f"/api/v1/certificates/{data['serial']}"
    revoke = live.request("POST", f"{path}/revoke", token=live.admin_token, body={})
    assert revoke.status == 200
    problem = assert_problem(live.request("POST", f"{path}/renew", client_cert=cert), 401)
    assert "revoked" in problem["detail"]
    _await_audit(live, f"cert:default/{data['serial']}", "revoked")
    # An admin may renew for others, but not a revoked certificate: the core's conflict.
    assert_problem(live.request("POST", f"{path}/renew", token=live.admin_token), 409)
    assert live.request("GET", path, token=live.admin_token).json["successor"] is None


def test_renewal_by_token_admin_or_the_issuer_that_issued_it(
    live: LiveServer, tmp_path: Path
) -> None:
    issuer, _ = create_token(live, "issuer", allowed_names=["*.ops.example.test"])
    other, _ = create_token(live, "issuer", name="other", allowed_names=["*.ops.example.test"])
    reader, _ = create_token(live, "reader")
    data, _ = _issue_client(live, tmp_path, "tok.ops.example.test", token=issuer)
    path = f"/api/v1/certificates/{data['serial']}/renew"
    assert_problem(live.request("POST", path, token=other), 403)
    assert_problem(live.request("POST", path, token=reader), 403)
    renewed = live.request("POST", path, token=issuer)
    assert renewed.status == 201, renewed.body
    again = live.request(
        "POST", f"/api/v1/certificates/{renewed.json['serial']}/renew", token=live.admin_token
    )
    assert again.status == 201
    assert_problem(live.request("POST", path, token=issuer, body={"bogus": 1}), 400)


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('match = "cn:ops"\nrole = "reader"', "match must be"),
        ('match = "profile:server"\nrole = "reader"', "only client and peer"),
        ('match = "san:*.a.test"\nrole = "root"', "role must be"),
        ('match = "san:*.a.test"\nrole = "issuer"', "needs allowed_names"),
        ('match = "san:*.a.test"\nrole = "admin"\nprofiles = ["client"]', "unrestricted"),
        ('match = "extension:not-an-oid"\nrole = "reader"', "bad match"),
        ('match = "san:*.a.test"\nrole = "reader"\ncolour = 1', "unknown key"),
    ],
)
def test_bad_mtls_rules_stop_the_service_at_start(tmp_path: Path, rule: str, message: str) -> None:
    from ca_service.config import load_settings
    from ca_service.errors import ConfigError

    config = tmp_path / "c.toml"
    config.write_text(f"[[mtls]]\n{rule}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings({"CA_CONFIG_FILE": str(config)})


def test_tls_settings_from_the_environment() -> None:
    from ca_service.config import MTLSRule, load_settings
    from ca_service.errors import ConfigError

    settings = load_settings(
        {
            "CA_TLS": "true",
            "CA_TLS_HOSTNAMES": "api.internal, 10.0.0.5",
            "CA_TLS_CLIENT_AUTH": "off",
        }
    )
    assert settings.tls and settings.tls_hostnames == ("api.internal", "10.0.0.5")
    assert settings.tls_client_auth == "off" and settings.mtls_rules == ()
    for bad in ({"CA_TLS_CLIENT_AUTH": "maybe"}, {"CA_TLS_HOSTNAMES": "a@b.test"}):
        with pytest.raises(ConfigError):
            load_settings(bad)
    assert MTLSRule("san", "*.a.test", "reader").allowed_names is None
