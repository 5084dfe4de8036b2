"""Hand-made ACME requests against a live ``ca-service serve --tls`` (SQLite and PostgreSQL),
each breaking exactly one rule of RFC 8555: the answer is a problem document of the ACME error
type the RFC names, and nothing is issued (the API's certificate count does not move).

The requests are flattened JWS built here (tests/acme/clients.py ``RawAcme``) with the test's
own ES256 key, so the broken part is the only difference from a request the server accepts;
each test also makes the good request beside the bad one, so a server refusing everything
would fail it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..helpers import write
from ..live import LiveServer, free_port
from .clients import (
    AcmeReply,
    Http01Responder,
    Issued,
    RawAcme,
    acme_serials,
    acme_stack,
    assert_good_certificate,
    b64url,
    create_eab,
    directory_url,
    split_pem,
)

PREFIX = "urn:ietf:params:acme:error:"


@dataclass
class Setup:
    live: LiveServer
    responder: Http01Responder

    def eab(self) -> tuple[str, str]:
        """A fresh EAB key for ``*.acme.test``: a key binds one account only."""
        return create_eab(self.live, ["*.acme.test"], name="refusals")

    @property
    def directory(self) -> str:
        return directory_url(self.live.base_url)

    def client(self, *, account: bool = True) -> RawAcme:
        acme = RawAcme(self.live, self.directory)
        if account:
            reply = acme.new_account(eab=self.eab())
            assert reply.status == 201, reply.body[:500]
        return acme


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[Setup]:
    """One server per backend for the module: every test makes its own account (a fresh key)."""
    port = free_port()
    base = tmp_path_factory.mktemp("acme-refusals")
    with acme_stack(base, module_db_url, http01_port=port) as (live, _dns):
        responder = Http01Responder(port)
        try:
            yield Setup(live, responder)
        finally:
            responder.stop()


def _name(label: str) -> str:
    return f"{label}-{secrets.token_hex(3)}.acme.test"


def assert_acme_problem(reply: AcmeReply, error: str, status: int | None = None) -> dict[str, Any]:
    """An RFC 8555 section 6.7 error: problem+json whose type is ``urn:...:error:<error>``."""
    assert reply.headers.get("content-type", "").startswith("application/problem+json"), (
        reply.status,
        reply.headers,
        reply.body[:300],
    )
    body = reply.json
    assert body["type"] == PREFIX + error, body
    if status is not None:
        assert reply.status == status, (reply.status, body)
    assert 400 <= reply.status < 500, (reply.status, body)
    assert body.get("status", reply.status) == reply.status
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert b"Traceback" not in reply.body
    return body  # type: ignore[no-any-return]


def _csr(names: list[str], key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def _ready_order(setup: Setup, acme: RawAcme, name: str) -> dict[str, Any]:
    """An order for ``name`` whose http-01 challenge the responder answered: status ready."""
    order = acme.new_order(name)
    assert order.status == 201, order.body[:500]
    location = order.headers["location"]
    for authz_url in order.json["authorizations"]:
        authz = acme.post(authz_url, None)
        assert authz.status == 200, authz.body[:500]
        challenge = next(c for c in authz.json["challenges"] if c["type"] == "http-01")
        setup.responder.answers[challenge["token"]] = acme.key_authorization(challenge["token"])
        answered = acme.post(challenge["url"], {})
        assert answered.status == 200, answered.body[:500]
        done = acme.poll(authz_url, ("valid", "invalid"))
        assert done.json["status"] == "valid", done.body[:1000]
    ready = acme.poll(location, ("ready", "invalid"))
    assert ready.json["status"] == "ready", ready.body[:1000]
    return {"url": location, **ready.json}


# ---------------------------------------------------------------------------- accounts


def test_a_new_account_without_eab_is_refused_when_eab_is_required(setup: Setup) -> None:
    acme = setup.client(account=False)
    assert acme.directory["meta"]["externalAccountRequired"] is True
    before = acme_serials(setup.live)

    refused = acme.new_account()
    assert_acme_problem(refused, "externalAccountRequired", 400)
    # No account was made: asking for the existing account of this key finds none.
    lookup = acme.new_account(onlyReturnExisting=True)
    assert_acme_problem(lookup, "accountDoesNotExist", 400)

    # The same key with the binding is accepted (the refusal was about the binding alone).
    made = acme.new_account(eab=setup.eab())
    assert made.status == 201, made.body[:500]
    assert made.json["status"] == "valid"
    assert acme_serials(setup.live) == before


def test_an_unknown_kid_is_account_does_not_exist(setup: Setup) -> None:
    acme = setup.client()
    good_kid = acme.kid
    assert good_kid is not None
    acme.kid = good_kid.rstrip("/") + "x" + secrets.token_hex(4)
    refused = acme.new_order(_name("nokid"))
    assert_acme_problem(refused, "accountDoesNotExist")
    acme.kid = good_kid
    assert acme.new_order(_name("kid")).status == 201


# ---------------------------------------------------------------------------- JWS and nonces


def test_a_replayed_nonce_is_bad_nonce_with_a_fresh_one(setup: Setup) -> None:
    acme = setup.client()
    nonce = acme.nonce()
    first = acme.post(acme.directory["newOrder"], _order(_name("n1")), nonce=nonce)
    assert first.status == 201, first.body[:500]
    before = acme_serials(setup.live)

    replayed = acme.post(acme.directory["newOrder"], _order(_name("n2")), nonce=nonce)
    assert_acme_problem(replayed, "badNonce", 400)
    fresh = replayed.headers.get("replay-nonce")
    assert fresh and fresh != nonce, replayed.headers
    # The fresh nonce the error carried is good for the retry (RFC 8555 section 6.5).
    retried = acme.post(acme.directory["newOrder"], _order(_name("n3")), nonce=fresh)
    assert retried.status == 201, retried.body[:500]
    assert acme_serials(setup.live) == before


def test_a_made_up_nonce_is_bad_nonce(setup: Setup) -> None:
    acme = setup.client()
    refused = acme.post(acme.directory["newOrder"], _order(_name("nx")), nonce=b64url(b"x" * 16))
    assert_acme_problem(refused, "badNonce", 400)


def _order(name: str) -> dict[str, Any]:
    return {"identifiers": [{"type": "dns", "value": name}]}


def test_a_bad_signature_is_refused(setup: Setup) -> None:
    acme = setup.client()
    before = acme_serials(setup.live)
    url = acme.directory["newOrder"]
    good = acme.jws(url, _order(_name("sig")))
    envelope = json.loads(good)
    signature = bytearray(envelope["signature"].encode())
    signature[5] = ord("A") if signature[5] != ord("A") else ord("B")
    envelope["signature"] = signature.decode()
    refused = acme._send("POST", url, json.dumps(envelope).encode())
    # RFC 8555 names no type for a signature that does not verify; like Boulder and Pebble,
    # the server answers malformed (docs/acme.md lists it).
    assert_acme_problem(refused, "malformed", 400)
    # A payload signed by another key under this account's kid is the same failure.
    other = RawAcme(setup.live, setup.directory)
    other.kid = acme.kid
    forged = other.post(url, _order(_name("forged")))
    assert_acme_problem(forged, "malformed", 400)
    # The same account signing properly is served.
    assert acme.new_order(_name("sig-ok")).status == 201
    assert acme_serials(setup.live) == before


def test_a_wrong_url_in_the_protected_header_is_unauthorized(setup: Setup) -> None:
    acme = setup.client()
    url = acme.directory["newOrder"]
    wrong = acme._send(
        "POST", url, acme.jws(url, _order(_name("url")), header={"url": acme.directory["newNonce"]})
    )
    # Section 6.4: "the server MUST reject the request as unauthorized" (no status is named).
    assert_acme_problem(wrong, "unauthorized")
    missing = acme._send("POST", url, acme.jws(url, _order(_name("url")), header={"url": None}))
    assert_acme_problem(missing, "malformed", 400)


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_a_forbidden_alg_is_bad_signature_algorithm(setup: Setup, alg: str) -> None:
    acme = setup.client()
    before = acme_serials(setup.live)
    url = acme.directory["newOrder"]
    if alg == "none":
        raw = acme.jws(url, _order(_name("none")), header={"alg": "none"}, signature=b"")
    else:
        # HS256 keyed with the EAB secret: a MAC, never an account signature.
        import hashlib
        import hmac

        from .clients import b64url_decode

        envelope = json.loads(acme.jws(url, _order(_name("hs")), header={"alg": "HS256"}))
        mac = hmac.new(
            b64url_decode(setup.eab()[1]),
            f"{envelope['protected']}.{envelope['payload']}".encode(),
            hashlib.sha256,
        )
        envelope["signature"] = b64url(mac.digest())
        raw = json.dumps(envelope).encode()
    refused = acme._send("POST", url, raw)
    body = assert_acme_problem(refused, "badSignatureAlgorithm", 400)
    # Section 6.2: the problem lists the algorithms the server does accept.
    assert isinstance(body.get("algorithms"), list) and "ES256" in body["algorithms"], body
    assert alg not in body["algorithms"]
    assert acme.new_order(_name("es256")).status == 201  # the same request signed with ES256
    assert acme_serials(setup.live) == before


# ---------------------------------------------------------------------------- policy and CSR


def test_a_name_outside_the_eab_policy_is_rejected_identifier(setup: Setup) -> None:
    acme = setup.client()
    before = acme_serials(setup.live)
    refused = acme.new_order("www.outside.example.test")
    body = assert_acme_problem(refused, "rejectedIdentifier", 400)
    text = json.dumps(body)
    assert "www.outside.example.test" in text, body
    assert "allowed_names" in text, body  # the rule that refused it is named
    # A name inside the policy is accepted on the same account.
    assert acme.new_order(_name("inside")).status == 201
    assert acme_serials(setup.live) == before


def test_a_csr_that_does_not_match_the_order_is_bad_csr(
    setup: Setup, openssl: str, tmp_path: Path
) -> None:
    acme = setup.client()
    name = _name("csr")
    order = _ready_order(setup, acme, name)
    before = acme_serials(setup.live)

    for names in ([_name("other")], [name, _name("extra")]):
        refused = acme.post(order["finalize"], {"csr": b64url(_csr(names))})
        assert_acme_problem(refused, "badCSR", 400)
    assert acme_serials(setup.live) == before
    still = acme.post(order["url"], None)
    assert still.json["status"] == "ready", still.body[:500]
    assert "certificate" not in still.json

    # The matching CSR finalizes the same order: one certificate, for the order's name.
    key = ec.generate_private_key(ec.SECP256R1())
    done = acme.post(order["finalize"], {"csr": b64url(_csr([name], key))})
    assert done.status == 200, done.body[:500]
    valid = acme.poll(order["url"], ("valid", "invalid"))
    assert valid.json["status"] == "valid", valid.body[:500]
    cert = acme.post(valid.json["certificate"], None)
    assert cert.status == 200 and cert.body.startswith(b"-----BEGIN CERTIFICATE-----")
    assert len(acme_serials(setup.live) - before) == 1
    certs = split_pem(cert.body)
    assert len(certs) >= 2, cert.body[:300]  # the leaf and its chain, without the root
    issued = Issued(
        write(tmp_path / "leaf.pem", certs[0]),
        write(tmp_path / "chain.pem", b"".join(certs[1:])),
        write(
            tmp_path / "key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
    )
    assert setup.live.root_pem is not None
    root = write(tmp_path / "root.pem", setup.live.root_pem)
    assert_good_certificate(openssl, root, issued, [name])
