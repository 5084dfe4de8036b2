"""RFC 8555 sections 6 and 7.1.1-7.2 on the wire: the directory, newNonce, and the strict
authentication of every POST (section 6.2-6.5), against a live `serve --tls` on SQLite and
PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.live import server_tracebacks

from .acme_client import (
    AccountKey,
    ACMEServerUnderTest,
    assert_acme_problem,
    b64,
    live_acme,
    new_key,
    sign,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def acme(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEServerUnderTest]:
    with live_acme(request.param, tmp_path_factory.mktemp(f"jws-{request.param}")) as server:
        yield server
        assert server_tracebacks(server.live) == 0, server.live.log()[-4000:]


@pytest.fixture(scope="module")
def account(acme: ACMEServerUnderTest) -> tuple[AccountKey, str]:
    key = new_key("ES256")
    return key, acme.client.account(key)


# ---------------------------------------------------------------------------- directory (7.1.1)


def test_directory_at_default_and_named_authority(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    d = c.directory
    for member in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange"):
        assert d[member].startswith("https://"), d
    assert d["renewalInfo"].endswith("/renewal-info")
    assert d["meta"]["externalAccountRequired"] is False
    # The default directory names its authority in every URL: the named directory is the same.
    authority = d["newNonce"].split("/acme/")[1].split("/")[0]
    named = c.get(f"{acme.base_url}/acme/{authority}/directory")
    assert named.status == 200 and named.json == d


def test_unknown_authority_and_root_are_404_problems(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    reply = c.get(f"{acme.base_url}/acme/no-such-ca/directory")
    assert_acme_problem(reply, 404, "malformed")
    roots = [
        a["name"]
        for a in acme.live.request("GET", "/api/v1/authorities", token=acme.live.admin_token).json[
            "items"
        ]
        if a.get("is_root") or a.get("parent") is None
    ]
    assert roots, "the hierarchy has a root"
    body = assert_acme_problem(
        c.get(f"{acme.base_url}/acme/{roots[0]}/directory"), 404, "malformed"
    )
    assert "root" in body["detail"]
    # Nor do a root's other ACME resources answer (HEAD: the status, no body).
    head = c.get(f"{acme.base_url}/acme/{roots[0]}/new-nonce", "HEAD")
    assert head.status == 404 and head.content_type == "application/problem+json"


# ---------------------------------------------------------------------------- newNonce (7.2)


def test_new_nonce_head_and_get(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    head = c.get(c.directory["newNonce"], "HEAD")
    got = c.get(c.directory["newNonce"], "GET")
    assert head.status == 200 and got.status == 204
    nonces = set()
    for reply in (head, got):
        assert reply.headers["cache-control"] == "no-store"
        nonce = reply.headers["replay-nonce"]
        assert len(nonce) >= 22 and "=" not in nonce  # 128 bits, base64url (6.5.1)
        nonces.add(nonce)
        assert reply.link("index") == [
            c.directory_url.replace("/acme/directory", "")
            + "/acme/"
            + c.directory["newNonce"].split("/acme/")[1].split("/")[0]
            + "/directory"
        ]
    assert len(nonces) == 2


def test_every_post_answer_has_a_fresh_nonce(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    seen: set[str] = set()
    replies = [
        c.post(kid, None, key, kid=kid),  # success
        c.post(kid, None, key, kid=kid, nonce="bogus"),  # badNonce
        c.raw(c.directory["newOrder"], b"{}"),  # malformed
        c.raw(c.directory["newOrder"], b"{}", content_type="application/json"),  # 415
        c.new_order(key, kid, "other.example"),  # rejectedIdentifier
    ]
    for reply in replies:
        nonce = reply.headers.get("replay-nonce")
        assert nonce and nonce not in seen, (reply.status, reply.headers)
        seen.add(nonce)
    assert [r.status for r in replies] == [200, 400, 400, 415, 400]
    # Each answered nonce is usable once: the next request succeeds with it.
    ok = c.post(kid, None, key, kid=kid, nonce=replies[1].headers["replay-nonce"])
    assert ok.status == 200


# ---------------------------------------------------------------------------- algorithms (6.2)


@pytest.mark.parametrize("kind", ["ES256", "ES384", "RS256", "EdDSA"])
def test_each_algorithm_makes_an_account_and_an_order(acme: ACMEServerUnderTest, kind: str) -> None:
    c = acme.client
    key = new_key(kind)
    created = c.new_account(key)
    assert created.status == 201, created.body
    kid = created.headers["location"]
    order = c.new_order(key, kid, f"{kind.lower()}.acme.test")
    assert order.status == 201, order.body
    assert order.json["status"] == "pending"


def test_small_rsa_key_is_bad_public_key(acme: ACMEServerUnderTest) -> None:
    body = assert_acme_problem(acme.client.new_account(new_key("RS1024")), 400, "badPublicKey")
    assert "2048" in body["detail"]


def test_private_jwk_is_bad_public_key(acme: ACMEServerUnderTest) -> None:
    key = new_key("ES256")
    private: dict[str, Any] = json.loads(key.key.export_private())
    reply = acme.client.post(
        acme.client.directory["newAccount"],
        {"termsOfServiceAgreed": True},
        key,
        with_jwk=False,
        protected_extra={"jwk": private},
    )
    assert_acme_problem(reply, 400, "badPublicKey")


def test_es256_header_with_p384_key_is_bad_public_key(acme: ACMEServerUnderTest) -> None:
    key = new_key("ES384")
    # Signed ES384 (jwcrypto would not sign ES256 with P-384), but the header says ES256.
    body = sign(key, {}, url=acme.client.directory["newAccount"], nonce=acme.client.nonce())
    outer = json.loads(body)
    protected = json.loads(_unb64(outer["protected"]))
    protected["alg"] = "ES256"
    outer["protected"] = b64(json.dumps(protected).encode())
    reply = acme.client.raw(acme.client.directory["newAccount"], json.dumps(outer).encode())
    assert_acme_problem(reply, 400, "badPublicKey")


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", "PS256"])
def test_unaccepted_algorithms(acme: ACMEServerUnderTest, alg: str) -> None:
    key = new_key("RS256")
    reply = acme.client.post(acme.client.directory["newAccount"], {}, key, alg=alg)
    body = assert_acme_problem(reply, 400, "badSignatureAlgorithm")
    assert set(body["algorithms"]) == {"ES256", "ES384", "RS256", "EdDSA"}


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------- serializations (6.2)


def test_compact_serialization_is_malformed(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    body = sign(
        new_key(), {}, url=c.directory["newAccount"], nonce=c.nonce(), serialization_form="compact"
    )
    assert body.count(b".") == 2
    assert_acme_problem(c.raw(c.directory["newAccount"], body), 400, "malformed")


def test_general_serialization_is_malformed(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    body = sign(
        new_key(), {}, url=c.directory["newAccount"], nonce=c.nonce(), serialization_form="general"
    )
    assert "signatures" in json.loads(body)
    assert_acme_problem(c.raw(c.directory["newAccount"], body), 400, "malformed")


def test_extra_member_and_unprotected_header_are_malformed(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    url = c.directory["newAccount"]
    extra = sign(new_key(), {}, url=url, nonce=c.nonce(), outer_extra={"x": "y"})
    assert_acme_problem(c.raw(url, extra), 400, "malformed")
    header = sign(new_key(), {}, url=url, nonce=c.nonce(), unprotected={"foo": "bar"})
    assert "header" in json.loads(header)
    assert_acme_problem(c.raw(url, header), 400, "malformed")


def test_not_json_is_malformed(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    assert_acme_problem(c.raw(c.directory["newAccount"], b"\xff\x00"), 400, "malformed")
    assert_acme_problem(c.raw(c.directory["newAccount"], b"[]"), 400, "malformed")


# ---------------------------------------------------------------------------- jwk / kid (6.2)


def test_both_jwk_and_kid_or_neither_are_malformed(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    both = c.post(c.directory["newOrder"], {}, key, kid=kid, with_jwk=True)
    assert_acme_problem(both, 400, "malformed")
    neither = c.post(c.directory["newOrder"], {}, key, with_jwk=False)
    assert_acme_problem(neither, 400, "malformed")


def test_kid_on_new_account_and_jwk_on_account_resources(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    assert_acme_problem(c.post(c.directory["newAccount"], {}, key, kid=kid), 400, "malformed")
    assert_acme_problem(c.post(c.directory["newOrder"], {}, key), 400, "malformed")


def test_unknown_kids_are_account_does_not_exist(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    other_authority = kid.replace("/acme/", "/acme/x").rsplit("/account/", 1)[0]
    for bad in (
        "garbage",
        kid + "x",
        f"{other_authority}/account/{kid.rsplit('/', 1)[1]}",
        kid.rsplit("/", 1)[0] + "/",
    ):
        reply = c.post(c.directory["newOrder"], {"identifiers": []}, key, kid=bad)
        assert_acme_problem(reply, 400, "accountDoesNotExist")


def test_signature_by_another_key_than_the_kids_is_malformed(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    _, kid = account
    c = acme.client
    intruder = new_key("ES256")
    reply = c.post(kid, None, intruder, kid=kid)
    body = assert_acme_problem(reply, 400, "malformed")
    assert "signature" in body["detail"]


def test_deactivated_account_kid_is_unauthorized(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key = new_key()
    kid = c.account(key)
    done = c.post(kid, {"status": "deactivated"}, key, kid=kid)
    assert done.status == 200 and done.json["status"] == "deactivated"
    for url, payload in (
        (kid, None),
        (c.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "a.acme.test"}]}),
        (c.directory["keyChange"], {}),
    ):
        assert_acme_problem(c.post(url, payload, key, kid=kid), 403, "unauthorized")
    # newAccount with the same key does not bring it back.
    assert_acme_problem(c.new_account(key), 403, "unauthorized")


# ---------------------------------------------------------------------------- nonce (6.5)


def test_missing_reused_and_unknown_nonces(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    assert_acme_problem(c.post(kid, None, key, kid=kid, nonce=None), 400, "badNonce")
    assert_acme_problem(
        c.post(kid, None, key, kid=kid, nonce="AAAAAAAAAAAAAAAAAAAAAA"), 400, "badNonce"
    )
    nonce = c.nonce()
    assert c.post(kid, None, key, kid=kid, nonce=nonce).status == 200
    assert_acme_problem(c.post(kid, None, key, kid=kid, nonce=nonce), 400, "badNonce")


def test_forged_request_does_not_burn_the_nonce(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    """Section 6.5 leaves the order of checks to the server; this one uses a nonce up only
    after the signature is proven, so a forger cannot spend another client's nonces."""
    key, kid = account
    c = acme.client
    nonce = c.nonce()
    forged = c.post(kid, None, new_key(), kid=kid, nonce=nonce)
    assert_acme_problem(forged, 400, "malformed")
    assert c.post(kid, None, key, kid=kid, nonce=nonce).status == 200


# ---------------------------------------------------------------------------- url (6.4)


def test_wrong_url_is_unauthorized_and_missing_url_malformed(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    wrong = c.post(kid, None, key, kid=kid, sign_url=c.directory["newOrder"])
    assert_acme_problem(wrong, 403, "unauthorized")
    missing = c.post(kid, None, key, kid=kid, sign_url=None)
    assert_acme_problem(missing, 400, "malformed")


# ---------------------------------------------------------------------------- transport


def test_wrong_content_type_is_415(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    body = sign(key, None, url=kid, nonce=c.nonce(), kid=kid)
    reply = c.raw(kid, body, content_type="application/json")
    assert reply.status == 415
    assert reply.content_type == "application/problem+json"
    assert reply.headers.get("replay-nonce")


def test_body_over_the_limit_is_413(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    """The size is judged by Content-Length before any byte of the body is read, so the
    request announces 2 MB and sends only its start: the server must answer 413 at once. (A
    client that pushes the whole body races the server's close over TLS: it can see the reset
    while still writing, never the answer, which is why this test does not.)"""
    key, kid = account
    c = acme.client
    body = sign(key, {"identifiers": []}, url=kid, nonce=c.nonce(), kid=kid)
    status, headers, answer = _announce_and_read(acme, kid, 2_000_000, body)
    assert status == 413
    assert headers.get("content-type") == "application/problem+json"
    # RFC 8555 section 6.5: every answer to a POST carries a nonce, errors included.
    assert headers.get("replay-nonce"), headers
    assert json.loads(answer)["type"].startswith("urn:ietf:params:acme:error:"), answer


def _announce_and_read(
    acme: ACMEServerUnderTest, url: str, length: int, start: bytes
) -> tuple[int, dict[str, str], bytes]:
    """POST to ``url`` announcing ``length`` bytes, send ``start``, read the answer to its end."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cadata=acme.live.root_pem)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/jose+json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    data = b""
    with (
        socket.create_connection((parts.hostname, parts.port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=parts.hostname) as sock,
    ):
        sock.sendall(head + start)
        with contextlib.suppress(ssl.SSLError, OSError):
            while len(data) < 1_000_000:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    head_text, _, answer = data.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length_header = headers.get("content-length")
    return (
        int(lines[0].split()[1]),
        headers,
        (answer[: int(length_header)] if length_header else answer),
    )


def test_jwk_not_on_its_curve_is_bad_public_key(acme: ACMEServerUnderTest) -> None:
    key = new_key("ES256")
    public = dict(key.public)
    public["y"] = public["x"]  # (x, x) is not a point of P-256
    reply = acme.client.post(
        acme.client.directory["newAccount"],
        {"termsOfServiceAgreed": True},
        key,
        with_jwk=False,
        protected_extra={"jwk": public},
    )
    assert_acme_problem(reply, 400, "badPublicKey")


def test_post_as_get_where_a_payload_is_needed(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    for url in (c.directory["newOrder"], c.directory["revokeCert"], c.directory["keyChange"]):
        assert_acme_problem(c.post(url, None, key, kid=kid), 400, "malformed")
    assert_acme_problem(c.post(c.directory["newAccount"], None, new_key()), 400, "malformed")
    assert_acme_problem(c.post(c.directory["newOrder"], b"[1]", key, kid=kid), 400, "malformed")
