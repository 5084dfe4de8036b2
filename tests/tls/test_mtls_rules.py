"""Issue 9 item 2, mTLS: a rule can only grant what its holder could not have obtained with less.

The reproduced chain was: an issuer token limited to `*.ci.example.test` got a client
certificate `CN=Ops Team` (SAN inside its policy), a rule `match = "subject:CN=Ops Team"` made it
an admin credential, which made an admin token, which issued `www.bank.example`. Now a rule on
subject text alone is refused at start, rules bind to the issuing authority and a profile, and
the chain breaks at its first step: the restricted issuer cannot get that certificate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ca_service.config import MTLSRule, Settings, check_mtls_authorities, load_settings
from ca_service.core.facade import Core
from ca_service.domain import IssuedCertificate
from ca_service.errors import ConfigError
from ca_service.web.app import create_app
from ca_service.web.mtls import first_matching_rule

from ..conftest import ADMIN, drop_pg_schema, make_pg_schema
from ..helpers import make_key
from ..live import LiveServer, assert_problem, certificate_count, create_token, start_server

BOUND = """
[[mtls]]
match = "subject:CN=Ops Team"
issued_by = "default"
certificate_profile = "client"
role = "admin"
"""


def _load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "c.toml"
    config.write_text(text)
    return load_settings({"CA_CONFIG_FILE": str(config)})


# ---------------------------------------------------------------------------- refused at start


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('match = "subject:CN=Ops Team"\nrole = "admin"', "subject text alone"),
        ('match = "subject:CN=Ops Team"\nrole = "reader"', "subject text alone"),
        (
            'match = "subject:CN=Ops Team"\nissued_by = "default"\nrole = "admin"',
            "certificate_profile",
        ),
        (
            'match = "subject:CN=Ops Team"\ncertificate_profile = "client"\nrole = "admin"',
            "issued_by",
        ),
        ('match = "extension:2.5.29.17"\nrole = "admin"', "extension text alone"),
        ('match = "profile:client"\nrole = "admin"', "issued_by"),
        (
            'match = "subject:CN=x"\nissued_by = "default"\ncertificate_profile = "server"\n'
            'role = "reader"',
            "client or peer",
        ),
        ('match = "subject:CN=x"\nissued_by = ""\nrole = "reader"', "non-empty string"),
        (
            'match = "san:*.a.test"\nrole = "issuer"\nallowed_names = ["*.a.test"]\n'
            'allowed_subjects = ["nonsense"]',
            "ATTR=value",
        ),
    ],
)
def test_unbound_rules_are_refused_when_the_config_loads(
    tmp_path: Path, rule: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _load(tmp_path, f"[[mtls]]\n{rule}\n")
    assert info.value.detail.startswith("[[mtls]] #1: ")


def test_the_refusal_says_how_to_bind_the_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, '[[mtls]]\nmatch = "subject:CN=Ops Team"\nrole = "admin"\n')
    detail = info.value.detail
    assert 'issued_by = "<authority>"' in detail and "certificate_profile" in detail
    assert "san:" in detail


def test_a_rule_built_in_code_is_refused_too() -> None:
    """Settings need not come from the TOML file: the rule itself refuses to exist unbound."""
    with pytest.raises(ConfigError, match="subject text alone"):
        MTLSRule("subject", "CN=Ops Team", "admin")
    with pytest.raises(ConfigError, match="client or peer"):
        MTLSRule("san", "*.a.test", "reader", certificate_profile="server")
    assert MTLSRule("san", "*.a.test", "admin").issued_by is None
    assert MTLSRule("profile", "client", "reader", issued_by="default").certificate_profile is None


def test_bound_and_san_rules_load(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        BOUND + '\n[[mtls]]\nmatch = "san:*.ops.example.test"\nrole = "issuer"\n'
        'allowed_names = ["*.ops.example.test"]\nallowed_subjects = ["cn=build-*"]\n',
    )
    first, second = settings.mtls_rules
    assert (first.issued_by, first.certificate_profile) == ("default", "client")
    assert second.allowed_subjects == ("CN=build-*",)


@pytest.fixture
def ca(two_hierarchies: Core) -> Core:
    return two_hierarchies


def test_create_app_refuses_a_rule_bound_to_an_unknown_authority(
    ca: Core,
) -> None:
    rule = MTLSRule(
        "subject", "CN=Ops Team", "admin", issued_by="nope", certificate_profile="client"
    )
    settings = ca.settings.with_overrides(mtls_rules=(rule,))
    with pytest.raises(ConfigError, match="issued_by 'nope' is not an authority"):
        create_app(settings, ca)
    bound = MTLSRule("subject", "CN=x", "admin", issued_by="other", certificate_profile="peer")
    good = ca.settings.with_overrides(mtls_rules=(bound,))
    assert create_app(good, ca).name == "ca_service"
    with pytest.raises(ConfigError, match="known: default, other"):
        check_mtls_authorities((rule,), {"default", "other"})


def _pair(ca: Core, issued: IssuedCertificate) -> tuple[x509.Certificate, Any]:
    return x509.load_pem_x509_certificate(issued.certificate_pem.encode()), issued.record


def test_a_bound_rule_matches_only_its_authority_and_profile(ca: Core) -> None:
    rule = MTLSRule(
        "subject", "CN=Ops Team", "admin", issued_by="default", certificate_profile="client"
    )
    same = ca.issue_with_new_key(ADMIN, common_name="Ops Team", profile="client")
    other_ca = ca.issue_with_new_key(
        ADMIN, common_name="Ops Team", profile="client", authority="other"
    )
    key = make_key("p256")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ops.example.test")]))
        .sign(key, hashes.SHA256())
    )
    peer = ca.issue_from_csr(csr.public_bytes(serialization.Encoding.PEM), ADMIN, profile="peer")
    assert first_matching_rule(*_pair(ca, same), (rule,)) == rule
    assert first_matching_rule(*_pair(ca, other_ca), (rule,)) is None
    peer_rule = MTLSRule(
        "subject",
        "CN=ops.example.test",
        "reader",
        issued_by="default",
        certificate_profile="client",
    )
    assert first_matching_rule(*_pair(ca, peer), (peer_rule,)) is None
    as_peer = MTLSRule(
        "subject", "CN=ops.example.test", "reader", issued_by="default", certificate_profile="peer"
    )
    assert first_matching_rule(*_pair(ca, peer), (peer_rule, as_peer)) == as_peer
    san_rule = MTLSRule("san", "*.example.test", "reader", issued_by="other")
    assert first_matching_rule(*_pair(ca, peer), (san_rule,)) is None
    profile_rule = MTLSRule("profile", "client", "reader", issued_by="other")
    assert first_matching_rule(*_pair(ca, other_ca), (profile_rule,)) == profile_rule
    assert first_matching_rule(*_pair(ca, same), (profile_rule,)) is None


# ---------------------------------------------------------------------------- the whole chain


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def chain_live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """`serve --tls` with the bound subject rule, on SQLite or a PostgreSQL schema."""
    base = tmp_path_factory.mktemp(f"chain-{request.param}")
    config = base / "ca-service.toml"
    config.write_text(BOUND)
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{base / 'ca.db'}"
    else:
        url, schema = make_pg_schema()
    server = start_server(base / "data", url, tls=True, extra_env={"CA_CONFIG_FILE": str(config)})
    try:
        yield server
    finally:
        server.stop()
        if schema:
            drop_pg_schema(schema)


def _credential(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / f"{data['serial']}.pem"
    path.write_text(data["private_key"] + data["certificate"] + data["chain"])
    path.chmod(0o600)
    return path


def test_the_reproduced_chain_fails_at_issuance(chain_live: LiveServer, tmp_path: Path) -> None:
    live = chain_live
    issuer, _ = create_token(live, "issuer", name="ci", allowed_names=["*.ci.example.test"])
    before = certificate_count(live)
    # Step 1, by key generated here and by CSR: the restricted issuer cannot get the subject.
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=issuer,
        body={"common_name": "Ops Team", "sans": ["build.ci.example.test"], "profile": "client"},
    )
    assert assert_problem(reply, 403)["rule"] == "caller.allowed_subjects"
    key = make_key("p256")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ops Team")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("build.ci.example.test")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=issuer,
        body={
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
            "profile": "client",
        },
    )
    assert assert_problem(reply, 403)["rule"] == "caller.allowed_subjects"
    assert certificate_count(live) == before
    # The issuer's own, allowed client certificate is no admin credential.
    own = live.request(
        "POST",
        "/api/v1/certificates",
        token=issuer,
        body={"common_name": "build.ci.example.test", "profile": "client"},
    )
    assert own.status == 201, own.body
    assert own.json["subject"] == "CN=build.ci.example.test"
    refused = live.request("GET", "/api/v1/tokens", client_cert=_credential(tmp_path, own.json))
    assert_problem(refused, 403)
    # The rule itself works for what an admin deliberately issued (so the refusal above is the
    # policy, not a rule that matches nothing).
    made = live.request(
        "POST",
        "/api/v1/certificates",
        token=live.admin_token,
        body={"common_name": "Ops Team", "profile": "client"},
    )
    assert made.status == 201 and made.json["subject"] == "CN=Ops Team"
    assert made.json["sans"] == []
    tokens = live.request("GET", "/api/v1/tokens", client_cert=_credential(tmp_path, made.json))
    assert tokens.status == 200


def test_serve_refuses_an_unbound_subject_rule_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[mtls]]\nmatch = "subject:CN=Ops Team"\nrole = "admin"\n')
    with pytest.raises(RuntimeError) as info:
        start_server(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'ca.db'}",
            extra_env={"CA_CONFIG_FILE": str(config)},
        )
    assert "subject text alone" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_serve_refuses_a_rule_bound_to_an_unknown_authority(tmp_path: Path, db_url: str) -> None:
    """The authorities a rule may name are read from the store: checked on both backends."""
    config = tmp_path / "typo.toml"
    config.write_text(BOUND.replace('issued_by = "default"', 'issued_by = "defualt"'))
    with pytest.raises(RuntimeError) as info:
        start_server(
            tmp_path / "data",
            db_url,
            extra_env={"CA_CONFIG_FILE": str(config)},
        )
    assert "issued_by 'defualt' is not an authority" in str(info.value)
    assert "Traceback" not in str(info.value)
