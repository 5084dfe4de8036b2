"""RFC 8555 sections 7.1.3-7.1.6, 7.4 and 7.5 on the wire: newOrder, authorizations,
challenges, the state machines driven by requests, finalize and the certificate download
(live `serve --tls`, SQLite and PostgreSQL; http-01 answered by a loopback responder)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import lint_cert, openssl_verify, tamper_signature, write
from tests.live import db_engine, list_all, server_tracebacks

from .acme_client import (
    AccountKey,
    ACMEServerUnderTest,
    assert_acme_problem,
    authorize,
    b64,
    fetcher,
    finalize,
    issue,
    live_acme,
    make_csr,
    new_key,
    poll,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def acme(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEServerUnderTest]:
    with live_acme(request.param, tmp_path_factory.mktemp(f"orders-{request.param}")) as server:
        yield server
        assert server_tracebacks(server.live) == 0, server.live.log()[-4000:]


@pytest.fixture(scope="module")
def account(acme: ACMEServerUnderTest) -> tuple[AccountKey, str]:
    key = new_key()
    return key, acme.client.account(key)


def _count(acme: ACMEServerUnderTest, table: str) -> int:
    engine = db_engine(acme.live)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
    finally:
        engine.dispose()


def _authz(acme: ACMEServerUnderTest, key: AccountKey, kid: str, order: dict[str, Any]) -> Any:
    return acme.client.fetch(order["authorizations"][0], key, kid).json


# ---------------------------------------------------------------------------- newOrder (7.4)


def test_order_shape_and_location(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    reply = acme.client.new_order(key, kid, "shape.acme.test")
    assert reply.status == 201
    order = reply.json
    assert reply.headers["location"].startswith(acme.base_url + "/acme/")
    assert order["status"] == "pending"
    assert order["identifiers"] == [{"type": "dns", "value": "shape.acme.test"}]
    assert order["finalize"] == reply.headers["location"] + "/finalize"
    assert order["expires"].endswith("Z") and len(order["authorizations"]) == 1
    assert acme.client.fetch(reply.headers["location"], key, kid).json == order


def test_identifiers_normalised_and_merged(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    reply = acme.client.new_order(
        key, kid, "Norm.ACME.test", "norm.acme.test", "bücher.acme.test", "ip:127.0.0.1"
    )
    assert reply.status == 201, reply.body
    assert reply.json["identifiers"] == [
        {"type": "dns", "value": "norm.acme.test"},
        {"type": "dns", "value": "xn--bcher-kva.acme.test"},
        {"type": "ip", "value": "127.0.0.1"},
    ]
    assert len(reply.json["authorizations"]) == 3


def test_unsupported_and_rejected_identifiers(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    before = _count(acme, "acme_authorizations"), _count(acme, "acme_orders")
    one = assert_acme_problem(c.new_order(key, kid, "email:a@b.test"), 400, "unsupportedIdentifier")
    assert one["subproblems"][0]["identifier"] == {"type": "email", "value": "a@b.test"}
    assert_acme_problem(c.new_order(key, kid, "bad..acme.test"), 400, "rejectedIdentifier")
    assert_acme_problem(c.new_order(key, kid, "ip:300.1.1.1"), 400, "rejectedIdentifier")
    both = assert_acme_problem(
        c.new_order(key, kid, "-x-.acme.test", "ok.acme.test", "ip:not-an-ip"), 403, "compound"
    )
    named = {s["identifier"]["value"]: s["type"] for s in both["subproblems"]}
    assert named == {
        "-x-.acme.test": "urn:ietf:params:acme:error:rejectedIdentifier",
        ["ip", "not-an-ip"][1]: "urn:ietf:params:acme:error:rejectedIdentifier",
    }
    bad: dict[str, Any]
    for bad in ({"identifiers": []}, {"identifiers": "a"}, {"identifiers": [{"type": "dns"}]}):
        assert_acme_problem(c.post(c.directory["newOrder"], bad, key, kid=kid), 400, "malformed")
    assert (_count(acme, "acme_authorizations"), _count(acme, "acme_orders")) == before


def test_name_outside_the_policy_creates_nothing(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    before = _count(acme, "acme_authorizations"), _count(acme, "acme_orders")
    reply = acme.client.new_order(key, kid, "ok2.acme.test", "www.other.example")
    body = assert_acme_problem(reply, 400, "rejectedIdentifier")
    assert body["subproblems"][0]["identifier"] == {"type": "dns", "value": "www.other.example"}
    assert (_count(acme, "acme_authorizations"), _count(acme, "acme_orders")) == before
    actor = f"acme:{kid.rsplit('/', 1)[1]}"
    audit = list_all(acme.live, f"/api/v1/audit?actor={actor}")
    refused = [e for e in audit if "www.other.example" in str(e)]
    assert refused, audit[-3:]
    assert "caller.allowed_names" in str(refused[0]), refused[0]


def test_validity_fields_and_unknown_profile_and_fields(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    for extra in (
        {"notBefore": "2030-01-01T00:00:00Z"},
        {"notAfter": "2030-01-01T00:00:00Z"},
        {"profile": "no-such-profile"},
        {"profile": 3},
        {"surprise": True},
    ):
        assert_acme_problem(c.new_order(key, kid, "p.acme.test", **extra), 400, "malformed")


def test_wildcard_gets_dns01_only(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    refused = acme.client.new_order(key, kid, "*.wild.acme.test")  # profile "server": no
    assert_acme_problem(refused, 400, "rejectedIdentifier")
    reply = acme.client.new_order(key, kid, "*.wild.acme.test", profile="wild")
    assert reply.status == 201, reply.body
    assert reply.json["profile"] == "wild"
    assert reply.json["identifiers"] == [{"type": "dns", "value": "*.wild.acme.test"}]
    authz = _authz(acme, key, kid, reply.json)
    assert authz["wildcard"] is True
    assert authz["identifier"] == {"type": "dns", "value": "wild.acme.test"}
    assert [ch["type"] for ch in authz["challenges"]] == ["dns-01"]


def test_ip_gets_http01_and_tls_alpn01(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    reply = acme.client.new_order(key, kid, "ip:127.0.0.9")
    authz = _authz(acme, key, kid, reply.json)
    assert sorted(ch["type"] for ch in authz["challenges"]) == ["http-01", "tls-alpn-01"]
    assert "wildcard" not in authz
    dns = _authz(acme, key, kid, acme.client.new_order(key, kid, "types.acme.test").json)
    assert sorted(ch["type"] for ch in dns["challenges"]) == ["dns-01", "http-01", "tls-alpn-01"]
    for ch in dns["challenges"]:
        assert ch["status"] == "pending" and len(ch["token"]) >= 43 and "=" not in ch["token"]


def test_authorization_reuse_is_per_account(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, other = new_key(), new_key()
    kid, other_kid = c.account(key), c.account(other)
    issue(c, key, kid, ["reuse.acme.test"], acme.http01)
    again = c.new_order(key, kid, "reuse.acme.test")
    assert again.status == 201 and again.json["status"] == "ready", again.json
    theirs = c.new_order(other, other_kid, "reuse.acme.test")
    assert theirs.json["status"] == "pending"
    assert set(theirs.json["authorizations"]).isdisjoint(again.json["authorizations"])


def test_another_accounts_resources_are_404(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, other = new_key(), new_key()
    kid, other_kid = c.account(key), c.account(other)
    placed = c.new_order(key, kid, "mine.acme.test")
    order_url = placed.headers["location"]
    authz = _authz(acme, key, kid, placed.json)
    for url in (order_url, placed.json["authorizations"][0], authz["challenges"][0]["url"]):
        assert_acme_problem(c.fetch(url, other, other_kid), 404, "malformed")
    answer = c.post(authz["challenges"][0]["url"], {}, other, kid=other_kid)
    assert_acme_problem(answer, 404, "malformed")
    deact = c.post(
        placed.json["authorizations"][0], {"status": "deactivated"}, other, kid=other_kid
    )
    assert_acme_problem(deact, 404, "malformed")
    fin = c.post(
        placed.json["finalize"], {"csr": b64(make_csr(["mine.acme.test"]))}, other, kid=other_kid
    )
    assert_acme_problem(fin, 404, "malformed")
    assert c.fetch(order_url, key, kid).json["status"] == "pending"
    assert _authz(acme, key, kid, placed.json)["status"] == "pending"


# ---------------------------------------------------------------------------- state machines


def test_finalize_before_ready_is_order_not_ready(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    placed = acme.client.new_order(key, kid, "early.acme.test")
    reply = finalize(
        acme.client, key, kid, placed.headers["location"], make_csr(["early.acme.test"])
    )
    assert_acme_problem(reply, 403, "orderNotReady")
    assert acme.client.fetch(placed.headers["location"], key, kid).json["status"] == "pending"


def _ready_order(acme: ACMEServerUnderTest, key: AccountKey, kid: str, *names: str) -> str:
    placed = acme.client.new_order(key, kid, *names)
    assert placed.status == 201, placed.body
    authorize(acme.client, key, kid, placed.json, acme.http01)
    url = placed.headers["location"]
    ready = poll(lambda: acme.client.fetch(url, key, kid), lambda r: r.json["status"] != "pending")
    assert ready.json["status"] == "ready", ready.json
    return str(url)


def test_bad_csrs_leave_the_order_ready(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    url = _ready_order(acme, key, kid, "csr.acme.test", "csr2.acme.test")
    certs = _count(acme, "certificates")
    for csr in (
        make_csr(["csr.acme.test"]),  # a name missing
        make_csr(["csr.acme.test", "csr2.acme.test", "csr3.acme.test"]),  # an extra name
        make_csr(["csr.acme.test", "csr2.acme.test"], common_name="other.acme.test"),
        tamper_signature(make_csr(["csr.acme.test", "csr2.acme.test"])),
        b"not a CSR at all",
    ):
        assert_acme_problem(finalize(c, key, kid, url, csr), 400, "badCSR")
        assert c.fetch(url, key, kid).json["status"] == "ready"
    order = c.fetch(url, key, kid).json
    for bad in ({"csr": "a=b"}, {"csr": 3}, {}):
        assert_acme_problem(c.post(order["finalize"], bad, key, kid=kid), 400, "malformed")
    assert c.fetch(url, key, kid).json["status"] == "ready"
    assert _count(acme, "certificates") == certs
    # A CN that is one of the order's names is fine.
    ok = finalize(
        c, key, kid, url, make_csr(["csr.acme.test", "csr2.acme.test"], None, "csr2.acme.test")
    )
    assert ok.status == 200, ok.body


def test_finalize_twice_issues_once(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    url = _ready_order(acme, key, kid, "twice.acme.test")
    certs = _count(acme, "certificates")
    csr = make_csr(["twice.acme.test"])
    first = finalize(c, key, kid, url, csr)
    assert first.status == 200 and first.json["status"] == "valid", first.body
    assert first.headers["location"] == url
    second = finalize(c, key, kid, url, csr)
    assert_acme_problem(second, 403, "orderNotReady")
    assert _count(acme, "certificates") == certs + 1


def test_challenge_answered_twice_is_validated_once(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    placed = c.new_order(key, kid, "ip:127.0.0.1", "once.acme.test")
    authz_url = placed.json["authorizations"][1]
    authz = c.fetch(authz_url, key, kid).json
    chall = next(ch for ch in authz["challenges"] if ch["type"] == "http-01")
    acme.http01.allow(chall["token"], key)
    first = c.post(chall["url"], {}, key, kid=kid)
    assert first.status == 200 and first.json["url"] == chall["url"]
    assert authz_url in first.link("up")
    poll(lambda: c.fetch(authz_url, key, kid), lambda r: r.json["status"] != "pending")
    hits = acme.http01.hits.get(chall["token"], 0)
    assert hits >= 1
    second = c.post(chall["url"], {}, key, kid=kid)
    assert second.status == 200 and second.json["status"] == "valid"
    assert second.json["validated"].endswith("Z")
    assert acme.http01.hits.get(chall["token"], 0) == hits
    authz = c.fetch(authz_url, key, kid).json
    assert authz["status"] == "valid"
    # The other challenges of a valid authorization are not to be answered any more.
    other = next(ch for ch in authz["challenges"] if ch["type"] == "dns-01")
    after = c.post(other["url"], {}, key, kid=kid)
    assert after.status == 200 and after.json["status"] == "pending"


def test_failed_validation_invalidates_challenge_authz_and_order(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    placed = c.new_order(key, kid, "fail.acme.test")
    url = placed.headers["location"]
    authz_url = placed.json["authorizations"][0]
    chall = next(
        ch for ch in c.fetch(authz_url, key, kid).json["challenges"] if ch["type"] == "http-01"
    )
    # Not allowed on the responder: it answers 404.
    assert c.post(chall["url"], {}, key, kid=kid).status == 200
    authz = poll(lambda: c.fetch(authz_url, key, kid), lambda r: r.json["status"] != "pending")
    assert authz.json["status"] == "invalid"
    failed = next(ch for ch in authz.json["challenges"] if ch["url"] == chall["url"])
    assert failed["status"] == "invalid"
    assert failed["error"]["type"].startswith("urn:ietf:params:acme:error:")
    order = c.fetch(url, key, kid).json
    assert order["status"] == "invalid"
    assert order["error"]["type"].startswith("urn:ietf:params:acme:error:")
    assert order["error"]["subproblems"][0]["identifier"]["value"] == "fail.acme.test"
    assert_acme_problem(
        finalize(c, key, kid, url, make_csr(["fail.acme.test"])), 403, "orderNotReady"
    )


def test_deactivated_authorization_invalidates_the_order(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    placed = c.new_order(key, kid, "deauthz.acme.test")
    authz_url = placed.json["authorizations"][0]
    bad = c.post(authz_url, {"status": "valid"}, key, kid=kid)
    assert_acme_problem(bad, 400, "malformed")
    done = c.post(authz_url, {"status": "deactivated"}, key, kid=kid)
    assert done.status == 200 and done.json["status"] == "deactivated"
    assert c.fetch(placed.headers["location"], key, kid).json["status"] == "invalid"
    again = c.post(authz_url, {"status": "deactivated"}, key, kid=kid)
    assert_acme_problem(again, 400, "malformed")
    # Its challenges cannot be answered now.
    chall = done.json["challenges"][0]
    assert c.post(chall["url"], {}, key, kid=kid).json["status"] == "pending"
    assert acme.http01.hits.get(chall["token"], 0) == 0


def test_challenge_payload_must_be_empty_object(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    authz = _authz(acme, key, kid, c.new_order(key, kid, "payload.acme.test").json)
    chall = authz["challenges"][0]
    assert_acme_problem(c.post(chall["url"], {"x": 1}, key, kid=kid), 400, "malformed")
    assert c.fetch(chall["url"], key, kid).json["status"] == "pending"


# ---------------------------------------------------------------------------- finalize and download


def test_issued_certificate(acme: ACMEServerUnderTest, tmp_path: Path, openssl: str) -> None:
    c = acme.client
    key, other = new_key(), new_key()
    kid, other_kid = c.account(key), c.account(other)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    url, final, chain = issue(
        c, key, kid, ["ip:127.0.0.1", "cert.acme.test"], acme.http01, leaf_key
    )
    pems = [
        p + "-----END CERTIFICATE-----\n"
        for p in chain.split("-----END CERTIFICATE-----")
        if p.strip()
    ]
    assert len(pems) >= 2
    leaf = x509.load_pem_x509_certificate(pems[0].encode())
    assert leaf.public_key() == leaf_key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert san.get_values_for_type(x509.DNSName) == ["cert.acme.test"]
    # Leaf then intermediates: each certificate is issued by the next.
    certs = [x509.load_pem_x509_certificate(p.encode()) for p in pems]
    for child, parent in itertools.pairwise(certs):
        assert child.issuer == parent.subject
    download = c.fetch(final["certificate"], key, kid)
    assert download.content_type == "application/pem-certificate-chain"
    assert download.headers.get("replay-nonce") and download.link("index")
    root = write(tmp_path / "root.pem", acme.live.root_pem)
    leaf_path = write(tmp_path / "leaf.pem", pems[0])
    inter = write(tmp_path / "inter.pem", "".join(pems[1:]))
    code, out = openssl_verify(openssl, root, leaf_path, inter)
    assert code == 0, out
    assert lint_cert(leaf_path) == ""
    serial = format(leaf.serial_number, "x")
    record = acme.live.request(
        "GET",
        f"/api/v1/certificates/{final['certificate'].rsplit('/', 1)[1]}",
        token=acme.live.admin_token,
    )
    assert record.status == 200, record.body
    assert record.json["requester"] == f"acme:{kid.rsplit('/', 1)[1]}"
    assert int(record.json["serial"], 16) == int(serial, 16)
    # Listed with its order (issue 11 item 5), by path, in the one record and in the listing.
    order_path = "/" + url.split("/", 3)[3]
    assert record.json["acme_order"] == order_path
    listing = acme.live.request(
        "GET", "/api/v1/certificates?limit=500", token=acme.live.admin_token
    ).json["items"]
    mine = [i for i in listing if int(i["serial"], 16) == int(serial, 16)]
    assert [i["acme_order"] for i in mine] == [order_path]
    assert all(i["acme_order"] is None for i in listing if i["requester"] == "admin")
    # Another account cannot download it.
    assert_acme_problem(c.fetch(final["certificate"], other, other_kid), 404, "malformed")
    assert_acme_problem(c.post(final["certificate"], {}, key, kid=kid), 400, "malformed")
    assert c.fetch(url, key, kid).json["certificate"] == final["certificate"]


def test_wildcard_order_by_dns01_end_to_end(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    import hashlib

    key, kid = account
    c = acme.client
    placed = c.new_order(key, kid, "*.star.acme.test", "star.acme.test", profile="wild")
    assert placed.status == 201, placed.body
    url = placed.headers["location"]
    for authz_url in placed.json["authorizations"]:
        authz = c.fetch(authz_url, key, kid).json
        chall = next(ch for ch in authz["challenges"] if ch["type"] == "dns-01")
        digest = hashlib.sha256(f"{chall['token']}.{key.thumbprint}".encode()).digest()
        acme.dns.add("_acme-challenge.star.acme.test", "TXT", b64(digest))
        assert c.post(chall["url"], {}, key, kid=kid).status == 200
        done = poll(fetcher(c, authz_url, key, kid), lambda r: r.json["status"] != "pending")
        assert done.json["status"] == "valid", done.json
    ready = poll(lambda: c.fetch(url, key, kid), lambda r: r.json["status"] != "pending")
    assert ready.json["status"] == "ready", ready.json
    # The CSR must name the wildcard itself, not its base only.
    assert_acme_problem(
        finalize(c, key, kid, url, make_csr(["star.acme.test", "x.star.acme.test"])), 400, "badCSR"
    )
    done = finalize(c, key, kid, url, make_csr(["*.star.acme.test", "star.acme.test"]))
    assert done.status == 200, done.body
    chain = c.fetch(done.json["certificate"], key, kid).body
    leaf = x509.load_pem_x509_certificate(chain)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["*.star.acme.test", "star.acme.test"]


def test_weak_csr_key_is_bad_csr_and_issues_nothing(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key, kid = account
    url = _ready_order(acme, key, kid, "weak.acme.test")
    certs = _count(acme, "certificates")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    reply = finalize(acme.client, key, kid, url, make_csr(["weak.acme.test"], weak))
    assert_acme_problem(reply, 400, "badCSR")
    assert _count(acme, "certificates") == certs
    assert acme.client.fetch(url, key, kid).json["status"] == "ready"


def test_only_advertised_profiles_can_be_ordered(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    advertised = set(acme.client.directory["meta"]["profiles"])
    assert {"server", "wild"} <= advertised and "client" not in advertised
    reply = acme.client.new_order(key, kid, "prof.acme.test", profile="client")
    assert_acme_problem(reply, 400, "malformed")


def _together(*calls: Any) -> list[Any]:
    """Run the calls at once in threads (each signs with a nonce of its own)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda f: f(), calls))


def test_racing_finalizes_issue_once(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    url = _ready_order(acme, key, kid, "race.acme.test")
    order = c.fetch(url, key, kid).json
    certs = _count(acme, "certificates")
    bodies = [{"csr": b64(make_csr(["race.acme.test"]))} for _ in range(4)]
    nonces = [c.nonce() for _ in bodies]
    replies = _together(
        *[
            (lambda b=b, n=n: c.post(order["finalize"], b, key, kid=kid, nonce=n))
            for b, n in zip(bodies, nonces, strict=True)
        ]
    )
    statuses = sorted(r.status for r in replies)
    assert statuses == [200, 403, 403, 403], [r.body[:200] for r in replies]
    for reply in replies:
        if reply.status == 403:
            assert_acme_problem(reply, 403, "orderNotReady")
    assert _count(acme, "certificates") == certs + 1
    assert c.fetch(url, key, kid).json["status"] == "valid"


def test_racing_challenge_answers_validate_once(
    acme: ACMEServerUnderTest, account: tuple[AccountKey, str]
) -> None:
    key, kid = account
    c = acme.client
    placed = c.new_order(key, kid, "racechall.acme.test")
    authz_url = placed.json["authorizations"][0]
    chall = next(
        ch for ch in c.fetch(authz_url, key, kid).json["challenges"] if ch["type"] == "http-01"
    )
    acme.http01.allow(chall["token"], key)
    nonces = [c.nonce() for _ in range(4)]
    replies = _together(
        *[(lambda n=n: c.post(chall["url"], {}, key, kid=kid, nonce=n)) for n in nonces]
    )
    assert all(r.status == 200 and r.json["url"] == chall["url"] for r in replies)
    done = poll(fetcher(c, authz_url, key, kid), lambda r: r.json["status"] != "pending")
    assert done.json["status"] == "valid"
    assert acme.http01.hits.get(chall["token"], 0) == 1
